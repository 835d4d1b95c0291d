from energy_lm.kernels.alibi import alibi_bias, alibi_slopes  # noqa: F401
from energy_lm.modules.attention import AttentionPattern, SelfAttention  # noqa: F401
from energy_lm.modules.clap import ClapEmbedding, ClapHead  # noqa: F401
