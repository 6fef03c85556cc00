"""The embedded synthetic world's recipes: its splits in memory (`data`), the CLIP teacher (`teacher`), the
class-agnostic RPN (`rpn`), and the end-to-end demo (`demo`, `report`), all on the loop of `regionclip.engine`.

>>> from regionclip.synthetic import WorldConfig, generate_world
>>> from regionclip.world import TeacherTrainConfig, RPNTrainConfig, get_or_train_teacher, get_or_train_rpn
>>> world = generate_world(WorldConfig.default(), "~/.cache/regionclip/worlds")
>>> teacher = get_or_train_teacher(world, TeacherTrainConfig(model="tiny"), "~/.cache/regionclip/models")
>>> model = teacher.load()                      # a RegionCLIP, as RegionCLIP.from_pretrained(teacher.weights)

Every trained model is cached under ``<cache>/teacher-<size>-<hash>`` / ``rpn-<hash>`` (hash of the training
config, the network shape, the world and the seed; `regionclip.engine.caching`); interrupted runs resume from
their newest checkpoint.
"""

from .data import SplitData, load_split
from .rpn import RPNTrainConfig, TrainedRPN, evaluate_rpn, get_or_train_rpn, train_rpn, world_anchor_sizes
from .teacher import (
    TeacherReport,
    TeacherTrainConfig,
    TrainedTeacher,
    clip_to_regionclip,
    evaluate_teacher,
    get_or_train_teacher,
    image_embeddings,
    train_teacher,
)

__all__ = [
    "RPNTrainConfig",
    "SplitData",
    "TeacherReport",
    "TeacherTrainConfig",
    "TrainedRPN",
    "TrainedTeacher",
    "clip_to_regionclip",
    "evaluate_rpn",
    "evaluate_teacher",
    "get_or_train_rpn",
    "get_or_train_teacher",
    "image_embeddings",
    "load_split",
    "train_rpn",
    "train_teacher",
    "world_anchor_sizes",
]
