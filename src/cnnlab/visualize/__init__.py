"""Seeing inside a trained network (8.5.1): which pixels a class or a neuron responds to, which
patches of a data set excite a neuron most, and what image it would like to see.

Every method works on any cnnlab model and on both kernels, with targets named as the chapter
names layers (:mod:`cnnlab.visualize.targets`).
"""

from cnnlab.visualize.targets import (
    Probe,
    Target,
    as_target,
    as_targets,
    layer_names,
    parse_target,
    resolve_layer,
    select,
    target_values,
)

__all__ = ["Probe", "Target", "as_target", "as_targets", "layer_names", "parse_target",
           "resolve_layer", "select", "target_values"]
