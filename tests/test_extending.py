"""docs/extending.md's code, run: the guide's matcher, sampler and method work with the engine as it is."""

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_every_python_block_of_the_extension_guide_runs_in_order():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) == 4  # the setup, a matcher, a sampler, a method
    namespace: dict = {"__name__": "extending_guide"}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    assert {"LogitMatcher", "NearestToMeanSampler", "dm"} <= set(namespace)
