"""The attention penalties against hand-computed values on small known maps."""

import math

import pytest
import torch

from glimpse.train.losses import block_layout, block_sparsity, doubly_stochastic, group_sparsity, model_loss
from glimpse.train.models import ModelOutput, build_model


def one_hot_map(size: int, row: int, col: int) -> torch.Tensor:
    attn = torch.zeros(1, 1, size, size)
    attn[0, 0, row, col] = 1.0
    return attn


def test_doubly_stochastic_hand_computed():
    # sample 0: sum over time [[1.5, 0.5], [0, 0]] -> 0.25 + 0.25 + 1 + 1; sample 1: 0.5 everywhere -> 4 * 0.25
    first = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.0]]])
    second = torch.full((2, 2, 2), 0.25)
    assert torch.allclose(doubly_stochastic(torch.stack([first, second])), torch.tensor([2.5, 1.0]))


def test_doubly_stochastic_is_zero_when_every_position_gets_exactly_one_step():
    attn = torch.eye(9).view(1, 9, 3, 3)  # step t looks only at position t
    assert doubly_stochastic(attn).item() == 0.0


def test_group_sparsity_8x8_four_blocks_hand_computed():
    # N = 4 on an 8 x 8 map: 16 blocks of 2 x 2
    uniform = torch.full((1, 3, 8, 8), 1 / 64)  # every block: sqrt(4) / 64 = 1/32, 16 blocks -> 0.5 per step
    assert group_sparsity(uniform, 4).item() == pytest.approx(1.5)
    assert group_sparsity(one_hot_map(8, 5, 2), 4).item() == pytest.approx(1.0)
    same_block = torch.zeros(1, 1, 8, 8)
    same_block[0, 0, 0, 0] = same_block[0, 0, 0, 1] = 0.5  # one block: sqrt(0.5)
    two_blocks = torch.zeros(1, 1, 8, 8)
    two_blocks[0, 0, 0, 0] = two_blocks[0, 0, 0, 2] = 0.5  # two blocks: 0.5 + 0.5
    assert group_sparsity(same_block, 4).item() == pytest.approx(math.sqrt(0.5))
    assert group_sparsity(two_blocks, 4).item() == pytest.approx(1.0)


def test_group_sparsity_overlapping_blocks_with_stride_hand_computed():
    # L = 2 with stride 1: blocks start at 0..6 on each side, 7 x 7 = 49 of them
    assert len(block_layout(8, 4, 1)) == 49
    uniform = torch.full((1, 1, 8, 8), 1 / 64)
    assert group_sparsity(uniform, 4, stride=1).item() == pytest.approx(49 * 2 / 64)
    assert group_sparsity(one_hot_map(8, 0, 0), 4, stride=1).item() == pytest.approx(1.0)  # the corner: 1 block
    assert group_sparsity(one_hot_map(8, 3, 3), 4, stride=1).item() == pytest.approx(4.0)  # inside: 4 blocks
    assert group_sparsity(uniform, 4, stride=2).item() == pytest.approx(group_sparsity(uniform, 4).item())


def test_even_blocks_cover_the_whole_map_with_sides_differing_by_at_most_one():
    for size in range(2, 13):
        for blocks in range(1, size // 2 + 1):
            cover = torch.zeros(size, size)
            sides = set()
            for rows, cols in block_layout(size, blocks):
                cover[rows, cols] += 1
                sides |= {rows.stop - rows.start, cols.stop - cols.start}
            assert bool((cover == 1).all()), (size, blocks)  # every cell in exactly one block
            assert max(sides) - min(sides) <= 1 and min(sides) >= 2
    # K = 7, N = 3: parts 2, 2, 3; an independent sum over hand-cut blocks
    attn = torch.rand(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    cuts = [0, 2, 4, 7]
    parts = list(zip(cuts, cuts[1:], strict=False))
    expected = sum(attn[:, :, a:b, c:d].square().sum((2, 3)).sqrt().sum(1)
                   for a, b in parts for c, d in parts)
    assert torch.allclose(group_sparsity(attn, 3), expected)
    # the paper's floor(K/N) blocks where they are sound: K = 8, N = 4 is the same 2 x 2 tiling
    assert block_layout(8, 4, layout="floor") == block_layout(8, 4)


@pytest.mark.parametrize(("size", "blocks", "layout", "match"), [
    (7, 4, "even", r"N=4 blocks on the 7x7 map leave blocks of one cell.*use --blocks 3"),
    (4, 4, "even", r"N=4 blocks on the 4x4 map leave blocks of one cell.*use --blocks 2"),
    (7, 4, "floor", r"N=4 blocks of side L=floor\(7/4\)=1 on the 7x7 map are single cells.*--blocks 3"),
    (7, 3, "floor", r"N=3 blocks of side L=floor\(7/3\)=2 cover only 6x6 of the 7x7 map.*layout=even"),
    (3, 4, "even", r"N=4, K=3; use --blocks 1"),
])
def test_a_geometry_whose_penalty_cannot_act_is_refused_naming_k_n_and_the_fix(size, blocks, layout, match):
    with pytest.raises(ValueError, match=match):
        block_layout(size, blocks, layout=layout)
    with pytest.raises(ValueError, match=match):
        build_model("regattn", channels=4, size=size, classes=2, hidden=4, blocks=blocks, layout=layout)


def test_block_sparsity_is_smallest_inside_one_block_and_largest_uniform():
    """sum_r sqrt(mass_r): 1 for a map inside one block, N for the uniform map over N x N equal blocks."""
    uniform = torch.full((1, 1, 8, 8), 1 / 64)
    in_one_block = torch.zeros(1, 1, 8, 8)
    in_one_block[0, 0, 2:4, 4:6] = 0.25
    assert block_sparsity(uniform, 4).item() == pytest.approx(4.0, abs=1e-4)
    assert block_sparsity(in_one_block, 4).item() == pytest.approx(1.0, abs=1e-4)
    assert block_sparsity(one_hot_map(8, 5, 2), 4).item() == pytest.approx(1.0, abs=1e-4)
    # written independently on random maps with uneven blocks (K = 7, N = 3)
    maps = torch.softmax(2 * torch.randn(3, 4, 49, generator=torch.Generator().manual_seed(1)), -1).view(3, 4, 7, 7)
    cuts = [0, 2, 4, 7]
    parts = list(zip(cuts, cuts[1:], strict=False))
    expected = sum(maps[:, :, a:b, c:d].sum((2, 3)).sqrt().sum(1)
                   for a, b in parts for c, d in parts)
    assert torch.allclose(block_sparsity(maps, 3), expected, atol=1e-3)
    per_step = block_sparsity(maps, 3) / 4
    assert bool((per_step >= 1 - 1e-4).all()) and bool((per_step <= 3 + 1e-4).all())
    # the gradient at the uniform map pushes mass towards one block; the l2,1 norm's gradient there is flat
    start = uniform.clone()
    start[0, 0, 0, 0] += 0.01
    start = (start / start.sum()).requires_grad_()
    block_sparsity(start, 4).sum().backward()
    assert start.grad[0, 0, 0, 1] < start.grad[0, 0, 7, 7]  # the fuller block's cells are cheaper to grow
    empty = one_hot_map(8, 1, 1).requires_grad_()
    block_sparsity(empty, 4).sum().backward()
    assert torch.isfinite(empty.grad).all()


def test_group_sparsity_groups_peaks_but_cannot_beat_a_uniform_map():
    """Four equal peaks cost less inside one block than scattered; no map summing to 1 costs less than 1/L per step."""
    in_one_block = torch.zeros(1, 1, 8, 8)
    in_one_block[0, 0, 2:4, 4:6] = 0.25
    scattered = torch.zeros(1, 1, 8, 8)
    scattered[0, 0, [0, 0, 6, 6], [0, 6, 0, 6]] = 0.25
    uniform = torch.full((1, 1, 8, 8), 1 / 64)
    assert group_sparsity(in_one_block, 4).item() == pytest.approx(0.5)
    assert group_sparsity(scattered, 4).item() == pytest.approx(1.0)
    # the l2,1 norm of a map summing to 1 is >= 1/L, reached by any map even inside its blocks: a uniform map
    # is already at the minimum, so a map concentrated in one block can tie it, never beat it
    assert group_sparsity(uniform, 4).item() == pytest.approx(group_sparsity(in_one_block, 4).item())
    maps = torch.softmax(3 * torch.randn(16, 5, 64, generator=torch.Generator().manual_seed(0)), -1).view(16, 5, 8, 8)
    per_step = group_sparsity(maps, 4) / 5
    assert bool((per_step >= 0.5 - 1e-6).all()) and bool((per_step <= 1.0 + 1e-6).all())


def test_group_sparsity_gradient_is_finite_on_empty_blocks():
    attn = one_hot_map(8, 1, 1).requires_grad_()
    group_sparsity(attn, 4, stride=1).sum().backward()
    assert torch.isfinite(attn.grad).all()
    assert attn.grad[0, 0, 1, 1].item() > 0


@pytest.mark.parametrize(("shape", "blocks", "stride", "match"), [
    ((1, 1, 8, 8), 4, 3, "stride must be between 1 and the block side L=2"),
    ((1, 1, 3, 3), 4, None, "blocks N <= map side K"),
    ((1, 1, 7, 7), 3, 1, "not a multiple of N=3"),
    ((1, 8, 8), 4, None, r"\(batch, time, K, K\)"),
])
def test_group_sparsity_rejects_bad_geometry(shape, blocks, stride, match):
    with pytest.raises(ValueError, match=match):
        group_sparsity(torch.zeros(shape), blocks, stride)


def test_model_loss_sums_cross_entropy_over_steps_and_adds_penalties():
    logits = torch.zeros(2, 3, 4)  # uniform over 4 classes: log 4 per step
    output = ModelOutput(logits, None, {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([0.5, 0.5])})
    assert model_loss(output, torch.tensor([0, 3])).item() == pytest.approx(3 * math.log(4) + 2.5)
    clip = ModelOutput(torch.tensor([[[2.0, 0.0]]]))  # (1, 1, 2)
    assert model_loss(clip, torch.tensor([0])).item() == pytest.approx(math.log(1 + math.exp(-2)))
