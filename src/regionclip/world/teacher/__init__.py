"""The embedded world's CLIP teacher: its training config (`config`), augmentation (`augment`), contrastive
training and caching (`train`) and evaluation (`evaluate`)."""

from .augment import (
    crop_sources,
    mirror_caption,
    normalize_pixels,
    random_resized_crops,
    resize_images,
    to_grayscale,
)
from .config import TRAINER_VERSION, TeacherTrainConfig
from .evaluate import TeacherReport, evaluate_teacher, image_embeddings, majority_baseline
from .train import (
    TrainedTeacher,
    build_teacher,
    clip_no_decay,
    clip_to_regionclip,
    get_or_train_teacher,
    make_optimizer,
    teacher_run_dir,
    train_teacher,
)

__all__ = [
    "TRAINER_VERSION",
    "TeacherReport",
    "TeacherTrainConfig",
    "TrainedTeacher",
    "build_teacher",
    "clip_no_decay",
    "clip_to_regionclip",
    "crop_sources",
    "evaluate_teacher",
    "get_or_train_teacher",
    "image_embeddings",
    "majority_baseline",
    "make_optimizer",
    "mirror_caption",
    "normalize_pixels",
    "random_resized_crops",
    "resize_images",
    "teacher_run_dir",
    "to_grayscale",
    "train_teacher",
]
