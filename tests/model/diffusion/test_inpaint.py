"""Grid partitions and RePaint's known-region step."""

import pytest
import torch

from adcli.model.diffusion.inpaint import grid_partition, masked_condition, repaint_known
from adcli.model.diffusion.schedules import NoiseSchedule


@pytest.mark.parametrize("size, cell, sets", [(32, 8, 2), (224, 16, 2), (224, 8, 3), (64, 16, 16)])
def test_partition_inpaints_every_cell_exactly_once(size, cell, sets):
    known = grid_partition(size, size, cell, sets, torch.Generator().manual_seed(0))
    assert known.shape == (sets, 1, size, size) and set(known.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal((1 - known).sum(0), torch.ones(1, size, size))  # each pixel inpainted by exactly one set
    cells = (1 - known)[:, 0, ::cell, ::cell]  # one value per cell ...
    assert torch.equal(cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2), (1 - known)[:, 0])  # ... constant inside it
    per_set = cells.flatten(1).sum(1)
    assert int(per_set.max() - per_set.min()) <= 1 and int(per_set.sum()) == (size // cell) ** 2


def test_partition_is_random_but_seeded():
    a = grid_partition(64, 64, 8, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a, grid_partition(64, 64, 8, 2, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, grid_partition(64, 64, 8, 2, torch.Generator().manual_seed(1)))


def test_bad_partitions_are_named():
    with pytest.raises(ValueError, match="must divide"):
        grid_partition(30, 30, 8, 2, torch.Generator())
    with pytest.raises(ValueError, match="sets must be in"):
        grid_partition(16, 16, 8, 5, torch.Generator())


def test_repaint_keeps_known_cells_equal_to_the_forward_noised_image():
    schedule = NoiseSchedule.make("linear", 1000, 1e-4, 0.02)
    images, state, noise = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    known = grid_partition(16, 16, 4, 2, torch.Generator().manual_seed(0))[:1].expand(2, -1, -1, -1)
    out = repaint_known(schedule, state, images, known, 200, noise)
    noised = schedule.q_sample(images, torch.full((2,), 200), noise)
    k = known.expand_as(out).bool()
    assert torch.equal(out[k], noised[k]) and torch.equal(out[~k], state[~k])
    condition = masked_condition(images, known, noise)
    assert torch.equal(condition[k], images[k]) and torch.equal(condition[~k], noise[~k])
