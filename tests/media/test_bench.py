"""The media benchmark's cases still drive today's media plane (a smoke test: counts, no timing)."""

import pytest

from bench import media_bench


@pytest.mark.parametrize("case", media_bench.CASES, ids=lambda case: case.__name__)
def test_each_case_moves_about_the_frames_asked(case):
    frames = 60
    assert 0.9 * frames <= case(frames) <= 1.1 * frames
