"""TFDS builders for the paper's datasets and the synthetic default: `dsbs_{name}`."""

import tensorflow_datasets as tfds
from etils import epath

from dsbs_jax.data import synthetic
from dsbs_jax.data.builders.base import ReleaseBuilder


class DsbsCqa(ReleaseBuilder):
    dataset = "cqa"


class DsbsSvamp(ReleaseBuilder):
    dataset = "svamp"


class DsbsEsnli(ReleaseBuilder):
    dataset = "esnli"


class DsbsAnli1(ReleaseBuilder):
    dataset = "anli1"


class DsbsAsdiv(ReleaseBuilder):
    dataset = "asdiv"


class DsbsSynthetic(ReleaseBuilder):
    """Generated word problems and a rule-based teacher: needs no manual dir."""

    dataset = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "2,000 training problems of 2 to 4 steps, counts up to 150.",
        "1.1.0": "10,000 training problems of 1 or 2 steps, counts up to 60: learnable in "
        "the quickstart's few CPU minutes.",
    }

    def release_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        directory = epath.Path(dl_manager.download_dir) / "synthetic_release"
        synthetic.write_release(directory)
        return directory


BUILDERS = {
    builder.dataset: builder
    for builder in (DsbsCqa, DsbsSvamp, DsbsEsnli, DsbsAnli1, DsbsAsdiv, DsbsSynthetic)
}
