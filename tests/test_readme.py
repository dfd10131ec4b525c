"""The README's research-code snippet runs as printed."""
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "README.md")


def test_research_snippet_runs(capsys):
  with open(README) as f:
    text = f.read()
  section = text[text.index("### From research code"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert "from rift_jax import" in code and "mrc(" in code
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
  scores, result = scope["scores"], scope["result"]
  assert scope["module"] == min(scores, key=lambda m: scores[m].mrc)
  assert 0.0 <= result.alpha <= 1.0 and result.curve[0]["alpha"] == 0.0
  assert scope["module"] in capsys.readouterr().out
