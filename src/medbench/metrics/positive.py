"""Which class of a binary task is "positive": the one whose recall is reported as the sensitivity.

MedMNIST's ``acc``/``auc`` read the last score column whatever the positive class is, so the choice changes only
which class's recall is called sensitivity (and the other's specificity). By default the positive class is the
minority class of the training labels (the rarer finding, e.g. BreastMNIST's label 0, "malignant"); ties go to the
last class, MedMNIST's positive column.
"""
from __future__ import annotations

import numpy as np

from medbench.errors import MedbenchError


def positive_index(positive_class: str | None, class_names, train_labels, task: str) -> int | None:
    """The positive class's index for a binary task (0 or 1); ``None`` for other tasks.

    ``positive_class``: the ``--positive-class`` NAME, or ``None`` for the minority class of ``train_labels``
    ([N, 1] or [N] class indices; ties, the last class). A name that is not a class, or any name for a task that
    is not binary, is a :class:`MedbenchError` of one line.
    """
    names = [str(c) for c in class_names]
    if task != "binary":
        if positive_class is not None:
            raise MedbenchError(f"--positive-class applies to binary tasks only: this dataset's task is {task} "
                                f"({len(names)} {'labels' if task == 'multilabel' else 'classes'}), where every "
                                f"class's recall is reported per class; drop --positive-class")
        return None
    if positive_class is not None:
        if positive_class not in names:
            raise MedbenchError(f"--positive-class {positive_class!r} is not a class of this dataset; classes: "
                                f"{', '.join(repr(n) for n in names)}")
        return names.index(positive_class)
    counts = np.bincount(np.asarray(train_labels).reshape(len(train_labels), -1)[:, 0].astype(np.int64),
                         minlength=2)[:2]
    return 0 if counts[0] < counts[1] else 1
