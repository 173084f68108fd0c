"""A sweep's summary.png says which settings have no finished run (every seed failed or diverged), instead of
leaving their column silently empty."""
import pandas as pd

from basinlab.sweep import summary


def test_a_setting_without_a_finished_run_is_marked_in_the_figure(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(summary, "save_png", lambda fig, path: drawn.setdefault("fig", fig) and path)
    runs = pd.DataFrame({"setting": ["batch", "batch", "online"], "final_val_acc1": [69.1, 69.3, 65.7]})
    summary.plot(runs, ["batch", "none", "online"], tmp_path / "summary.png")
    texts = [(t.get_text(), t.get_position()[0]) for t in drawn["fig"].axes[0].texts]
    assert texts == [("no finished run\n(failed or diverged)", 1)]
