"""Seeing inside a trained network (8.5.1): which pixels a class or a neuron responds to, which
patches of a data set excite a neuron most, and what image it would like to see.

Every method works on any cnnlab model and on both kernels, with targets named as the chapter
names layers (:mod:`cnnlab.visualize.targets`).
"""

from cnnlab.visualize.gradients import METHODS, deconvnet, gradients, guided, saliency
from cnnlab.visualize.maps import feature_maps, first_filters
from cnnlab.visualize.patches import (
    Box,
    NoProjection,
    TopK,
    can_project,
    crop_mask,
    crops,
    project,
    projections,
    receptive_box,
    top_k,
)
from cnnlab.visualize.synthesis import input_range, synthesize, to_pixels
from cnnlab.visualize.targets import (
    Probe,
    Target,
    as_target,
    as_targets,
    check_images,
    inspecting,
    layer_names,
    parse_target,
    resolve_layer,
    select,
    target_values,
)

__all__ = ["METHODS", "Box", "NoProjection", "Probe", "Target", "TopK", "as_target", "as_targets", "can_project", "check_images",
           "crop_mask", "crops", "deconvnet", "feature_maps", "first_filters", "gradients",
           "guided", "input_range", "inspecting", "layer_names", "parse_target", "project",
           "projections", "receptive_box", "resolve_layer", "saliency", "select", "synthesize",
           "target_values", "to_pixels", "top_k"]
