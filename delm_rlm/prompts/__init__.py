"""Every prompt text delm-rlm sends to a model, and the helpers that fill them in.

One room, a file per concern; every name is importable from `delm_rlm.prompts`:
- `agents`: the RLM agent, the team's agents and finalizer, the delm (no-REPL) mode, the
  judge, describing a corpus, cutting long texts to a window;
- `baselines`: direct and the central orchestrator (delm_rlm.methods);
- `labels`: classify's shared rules and votes, spot checks, conflicts;
- `reading`: the reading path for documents (summaries with anchors, query-aware gists);
- `verify`: what the admission gate and `literals` tell an agent after a rejection or a failed cell.
"""

from delm_rlm.prompts.agents import *  # noqa: F403
from delm_rlm.prompts.baselines import *  # noqa: F403
from delm_rlm.prompts.labels import *  # noqa: F403
from delm_rlm.prompts.reading import *  # noqa: F403
from delm_rlm.prompts.verify import *  # noqa: F403
