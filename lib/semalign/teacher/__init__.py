"""Teacher side: residual capture, Captum layer attribution, semantic bases, the teacher cache."""

from semalign.teacher.activations import (
    ResidualRecorder,
    TeacherBatch,
    residual_states,
    teacher_forward,
    topk_with_rest,
)
from semalign.teacher.attribution import AttributeConfig, layer_scores, plot_layer_scores, scores_to_plot_rows
from semalign.teacher.bases import (
    VARIANTS,
    BasesConfig,
    VocabAlignment,
    align_vocabularies,
    gram,
    inverse_gram,
    pinv_row_chunks,
    pinv_rows,
    unit_rows,
    vocabulary_tokens,
    write_bases,
)
from semalign.teacher.cache import (
    CacheConfig,
    cache_arrays,
    kept_layers,
    read_contribution,
    residual_stream,
    state_name,
    write_teacher_cache,
)

__all__ = [
    "AttributeConfig",
    "BasesConfig",
    "CacheConfig",
    "ResidualRecorder",
    "TeacherBatch",
    "VARIANTS",
    "VocabAlignment",
    "align_vocabularies",
    "cache_arrays",
    "gram",
    "inverse_gram",
    "kept_layers",
    "layer_scores",
    "pinv_row_chunks",
    "pinv_rows",
    "plot_layer_scores",
    "read_contribution",
    "residual_states",
    "residual_stream",
    "scores_to_plot_rows",
    "state_name",
    "teacher_forward",
    "topk_with_rest",
    "unit_rows",
    "vocabulary_tokens",
    "write_bases",
    "write_teacher_cache",
]
