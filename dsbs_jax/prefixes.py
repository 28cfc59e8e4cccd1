"""The two task prefixes of distilling step-by-step, where every part can import them.

Training's SeqIO preprocessors (which need TensorFlow) and `dsbs-infer` (which must not)
both use them: a student answers what it was trained on only with the same prefixes.
"""

LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "
