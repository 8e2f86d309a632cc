"""FlatLayout: gathers land where the views say, for every mix of shapes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from pyroopt.flat import FlatLayout, torch_alignment

SHAPES = [
    [(10,)] * 5,
    [(2, 3), (4, 3), (1, 3), (3,), (), (0,), (2, 2, 2), (5, 2, 2), ()],
    [(), (), ()],
    [(0, 4), (3, 4)],
    [(2, 0), (3, 0), (1,)],
]


@pytest.mark.parametrize("shapes", SHAPES, ids=range(len(SHAPES)))
def test_gather_places_each_tensor_at_its_view(shapes):
    torch.manual_seed(0)
    tensors = [torch.randn(s) for s in shapes]
    tensors[0] = tensors[0].t() if tensors[0].dim() == 2 else tensors[0]  # non-contiguous too
    layout = FlatLayout([t.shape for t in tensors])
    flat = torch.full((layout.numel,), float("nan"))
    target = layout.target(flat)
    layout.gather(tensors, target)
    assert_close(flat, torch.cat([t.reshape(-1) for t in tensors]), rtol=0, atol=0)
    for view, t in zip(target.views, tensors, strict=True):
        assert_close(view, t, rtol=0, atol=0)
        assert view.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()


def test_runs_group_tensors_sharing_trailing_dimensions():
    layout = FlatLayout([torch.Size(s) for s in [(2, 3), (4, 3), (3,), (5,), (), (2,)]])
    assert [(r.first, r.stop, r.trailing) for r in layout.runs] == [
        (0, 2, (3,)),
        (2, 4, ()),
        (5, 6, ()),
    ]
    assert layout.scalars == [4]


@pytest.mark.parametrize("shape", [(3,), (2, 3)], ids=["1-d", "2-d"])
@pytest.mark.parametrize("bad", ["missing", "sparse"])
def test_gather_refuses_a_missing_or_sparse_tensor(shape, bad):
    """The engine's steady flat step relies on this to skip its own checks of every
    gradient (``RuleBucket._gather_steady``): if torch ever copies a sparse tensor or a
    ``None`` into a dense buffer, this fails."""
    dense = torch.ones(shape)
    other = None if bad == "missing" else torch.ones(shape).to_sparse()
    layout = FlatLayout([torch.Size(shape)] * 2)
    target = layout.target(torch.zeros(layout.numel))
    expected = TypeError if bad == "missing" else NotImplementedError
    for tensors in ([dense, other], [other, dense]):
        with pytest.raises(expected):
            layout.gather(tensors, target)


@pytest.mark.parametrize("align", [1, 3, 8, 16])
@pytest.mark.parametrize("shapes", SHAPES, ids=range(len(SHAPES)))
def test_an_aligned_gather_places_each_tensor_at_an_aligned_view_and_leaves_gaps_alone(
    shapes, align
):
    torch.manual_seed(0)
    tensors = [torch.randn(s) for s in [(1,), *shapes, (7,), (7,), (7,)]]
    tensors[1] = tensors[1].t() if tensors[1].dim() == 2 else tensors[1]  # non-contiguous too
    layout = FlatLayout([t.shape for t in tensors], align=align)
    flat = torch.zeros(layout.numel)
    target = layout.target(flat)
    layout.gather(tensors, target)
    covered = torch.zeros(layout.numel, dtype=torch.bool)
    for view, t, offset in zip(target.views, tensors, layout.offsets, strict=True):
        assert offset % align == 0
        assert view.storage_offset() == offset
        assert torch.equal(view, t)
        covered[offset : offset + t.numel()] = True
    assert not flat[~covered].any(), "a gather wrote into a gap"
    assert layout.numel % align == 0
    assert layout.gaps == (layout.numel != sum(t.numel() for t in tensors))


def test_torch_alignment_is_64_bytes_in_every_dtype():
    assert torch.empty(1000).data_ptr() % 64 == 0
    assert torch_alignment(torch.float32) == 16
    assert torch_alignment(torch.float64) == 8
    assert torch_alignment(torch.bfloat16) == 32
