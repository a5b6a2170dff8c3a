import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dlrun.data.augment import (
    Augment,
    color_jitter,
    cutmix,
    cutout,
    cutout_at,
    mixup,
    random_crop,
    random_flip,
)
from dlrun.errors import UserError

ALL_ON = dict(crop_padding=2, flip=True, cutout=3, jitter=0.4, mixup=0.4, cutmix=1.0)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def clone(g: torch.Generator) -> torch.Generator:
    """A generator that will draw exactly what g draws next."""
    return torch.Generator(g.device).set_state(g.get_state())


def images(n: int = 8, c: int = 3, h: int = 6, w: int = 7, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed)).to(dtype)


def run(aug: Augment, x: torch.Tensor, y: torch.Tensor):
    """The whole per-batch pipeline, as the trainer calls it."""
    return aug.mix(aug.erase(aug.pixels(x)), y)


# --- shapes, dtypes, labels ---

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_op_keeps_shape_and_dtype_and_mixes_return_one_label_per_sample(dtype):
    x, y, rng = images(dtype=dtype), torch.arange(8), np.random.default_rng(0)
    outputs = [random_crop(x, 2, gen()), random_flip(x, gen()), cutout(x, 3, gen()),
               cutout_at(x, 3, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)),
               color_jitter(x, 0.5, gen())]
    for mix in (mixup, cutmix):
        xm, y1, y2, lam = mix(x, y, 1.0, rng, gen())
        assert y1.shape == y2.shape == (8,) and isinstance(lam, float)
        outputs.append(xm)
    x2, y1, y2, _ = run(Augment(**ALL_ON), x, y)
    outputs.append(x2)
    assert y1.shape == y2.shape == (8,)
    for out in outputs:
        assert out.shape == x.shape and out.dtype == dtype


# --- determinism and resume ---

def test_same_seed_same_batches_different_seed_different_batches():
    x, y = images(), torch.arange(8)
    a, b, c = Augment(**ALL_ON, seed=3), Augment(**ALL_ON, seed=3), Augment(**ALL_ON, seed=4)
    for _ in range(3):
        out_a, out_b, out_c = run(a, x, y), run(b, x, y), run(c, x, y)
        assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[2], out_b[2]) and out_a[3] == out_b[3]
        assert not torch.equal(out_a[0], out_c[0])


def test_state_dict_survives_torch_save_weights_only_and_reproduces_the_next_batch():
    x, y = images(), torch.arange(8)
    first = Augment(**ALL_ON, seed=5)
    run(first, x, y)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # only tensors, ints and strs: a checkpoint can hold it
    resumed = Augment(**ALL_ON, seed=99)
    resumed.load_state_dict(state)
    for _ in range(3):  # several batches, so both the mixup and the cutmix branch come round
        expected, got = run(first, x, y), run(resumed, x, y)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[2], got[2]) and expected[3] == got[3]


def test_a_generator_state_from_another_device_type_is_skipped_but_the_host_rng_still_loads(caplog):
    source, target = Augment(mixup=1.0, seed=1), Augment(mixup=1.0, seed=2)
    source.rng.random()
    state = dict(source.state_dict(), generator=torch.zeros(16, dtype=torch.uint8))  # a CUDA state's size
    with caplog.at_level("WARNING", logger="dlrun"):
        target.load_state_dict(state)
    assert "another device type" in caplog.text
    assert target.rng.random() == source.rng.random()


def test_all_switches_off_returns_inputs_unchanged():
    x, y = images(), torch.arange(8)
    aug = Augment(seed=1)
    assert not aug.enabled and not aug.pixel_ops and not aug.mixes
    assert torch.equal(aug.pixels(x), x) and torch.equal(aug.erase(x), x)
    xm, y1, y2, lam = aug.mix(x, y)
    assert torch.equal(xm, x) and torch.equal(y1, y) and y2 is None and lam == 1.0


def test_flags_say_which_groups_are_on():
    assert Augment(flip=True).pixel_ops and not Augment(flip=True).mixes
    assert Augment(cutout=4).enabled and not Augment(cutout=4).pixel_ops
    assert Augment(cutmix=1.0).mixes and not Augment(cutmix=1.0).pixel_ops


# --- flip ---

def test_flip_twice_with_p1_or_the_same_mask_is_identity_and_p0_changes_nothing():
    x = images()
    once = random_flip(x, gen(), p=1.0)
    assert torch.equal(once, x.flip(-1))
    assert torch.equal(random_flip(once, gen(), p=1.0), x)
    g = gen(7)
    replay = clone(g)
    half = random_flip(x, g)
    assert torch.equal(random_flip(half, replay), x)  # the same per-sample mask undoes itself
    flipped = [torch.equal(half[i], x[i].flip(-1)) for i in range(8)]
    assert all(f or torch.equal(half[i], x[i]) for i, f in enumerate(flipped)) and 0 < sum(flipped) < 8
    assert torch.equal(random_flip(x, gen(), p=0.0), x)


# --- crop ---

def naive_crop(x, padding, dy, dx):
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])


def test_random_crop_matches_a_per_sample_loop_with_zeros_entering():
    x, g = images(n=6), gen(2)
    replay = clone(g)
    out = random_crop(x, 3, g)
    dy, dx = torch.randint(0, 7, (2, 6), generator=replay)
    assert torch.equal(out, naive_crop(x, 3, dy, dx))
    assert torch.equal(random_crop(x, 0, gen()), x)


def test_random_crop_offsets_cover_the_whole_range():
    """Recover each sample's shift by comparing with all (2p+1)^2 shifts; every shift must occur."""
    p, n, h, w = 2, 300, 5, 5
    x = (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w).expand(n, 1, h, w)  # distinct, nonzero
    out = random_crop(x, p, gen(0))
    shifts = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    candidates = torch.stack([naive_crop(x[:1], p, [dy], [dx])[0] for dy, dx in shifts])  # (25, 1, H, W)
    matches = (out[:, None] == candidates[None]).flatten(2).all(-1)  # (N, 25)
    assert (matches.sum(1) == 1).all()  # every output is exactly one shift of its input
    assert set(matches.int().argmax(1).tolist()) == set(range(len(shifts)))


# --- cutout ---

@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 7), cy=st.integers(0, 5), cx=st.integers(0, 6))
def test_cutout_at_zeroes_exactly_the_clipped_square(size, cy, cx):
    x = images(n=1, h=6, w=7) + 0.5  # no zeros of its own
    out = cutout_at(x, size, torch.tensor([cy]), torch.tensor([cx]))
    mask = np.zeros((6, 7), dtype=bool)
    top, left = cy - size // 2, cx - size // 2
    mask[max(top, 0):max(top + size, 0), max(left, 0):max(left + size, 0)] = True
    expected = np.where(mask, 0.0, x[0].numpy())
    np.testing.assert_array_equal(out[0].numpy(), expected)


def test_cutout_at_a_corner_zeroes_a_clipped_square():
    x = torch.ones(1, 2, 6, 6)
    out = cutout_at(x, 4, torch.tensor([0]), torch.tensor([5]))  # rows -2..1, columns 3..6: clipped to 2x3
    zeroed = out[0, 0] == 0
    assert zeroed.sum() == 6 and zeroed[:2, 3:].all() and (out[0, 1] == out[0, 0]).all()


def test_random_cutout_squares_are_clipped_only_at_the_borders():
    size, n = 4, 400
    out = cutout(torch.ones(n, 1, 8, 8), size, gen(1))
    areas, kept_rows, kept_cols = [], [], []
    for sample in (out[:, 0] == 0).numpy():
        rows, cols = np.nonzero(sample.any(1))[0], np.nonzero(sample.any(0))[0]
        assert sample.sum() == len(rows) * len(cols)  # a rectangle
        for kept, first, last in ((len(rows), rows[0], rows[-1]), (len(cols), cols[0], cols[-1])):
            assert kept == size or (kept < size and (first == 0 or last == 7))
        areas.append(sample.sum())
        kept_rows.append(len(rows))
        kept_cols.append(len(cols))
    assert max(areas) == size * size and min(areas) < size * size  # some whole squares, some clipped
    # A centre on the first row or column keeps size - size//2 of the square's rows or columns.
    assert min(kept_rows) == min(kept_cols) == size - size // 2
    assert torch.equal(cutout(out, 0, gen()), out)


# --- colour jitter ---

def test_jitter_strength_zero_is_identity_and_output_stays_in_0_1():
    x = images(n=32)
    assert torch.equal(color_jitter(x, 0.0, gen()), x)
    out = color_jitter(x, 0.9, gen())
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


def test_jitter_matches_torchvision_per_sample_with_the_same_factors():
    import torchvision.transforms.v2.functional as TF  # here only: the import takes seconds

    x, s, g = images(n=6, seed=5), 0.6, gen(6)
    replay = clone(g)
    out = color_jitter(x, s, g)
    factors = (1 - s) + 2 * s * torch.rand(3, 6, generator=replay)  # brightness, contrast, saturation rows
    for i, (b, c, sat) in enumerate(factors.T.tolist()):
        expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], b), c), sat)
        # torchvision's grey weighs red 0.2989, not ITU-R 601's 0.299: differences up to ~3e-5.
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)


def test_jitter_keeps_grey_images_grey():
    grey = torch.rand(16, 1, 5, 5, generator=gen(3)).expand(16, 3, 5, 5)
    out = color_jitter(grey, 0.8, gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_jitter_on_a_constant_grey_image_is_brightness_only():
    """Contrast and saturation leave a constant grey image alone, so out = clamp(v * b), b ~ U[1 - s, 1 + s]."""
    v, s, n = 0.25, 0.5, 500
    g = gen(4)
    replay = clone(g)
    out = color_jitter(torch.full((n, 3, 2, 2), v), s, g)
    b = (1 - s) + 2 * s * torch.rand(3, n, generator=replay)[0]  # the first of the three factors
    torch.testing.assert_close(out, (v * b).view(n, 1, 1, 1).expand_as(out))
    assert abs(b.mean().item() - 1.0) < 0.05 and b.min() < 0.55 and b.max() > 1.45
    bright = color_jitter(torch.full((n, 3, 1, 1), 0.9), s, gen())
    assert bright.max() == 1.0  # clamped: 0.9 * b > 1 for b > 1.11


def test_jitter_refuses_non_rgb_data():
    with pytest.raises(UserError, match=r"augment.jitter needs RGB images \(3 channels\); this data has 1"):
        color_jitter(torch.rand(2, 1, 4, 4), 0.3, gen())


# --- mixup ---

def test_mixup_is_the_stated_blend_of_each_sample_with_its_partner():
    x, y = images(n=10), torch.arange(10)
    xm, y1, y2, lam = mixup(x, y, 0.4, np.random.default_rng(1), gen())
    assert 0 <= lam <= 1 and torch.equal(y1, y) and sorted(y2.tolist()) == list(range(10))
    assert torch.equal(xm, lam * x + (1 - lam) * x[y2])  # y = arange, so y2 is the permutation


def test_mixup_lam_follows_beta_alpha_alpha():
    x, y = torch.rand(2, 1, 1, 1), torch.arange(2)
    rng, g = np.random.default_rng(0), gen()
    uniform = [mixup(x, y, 1.0, rng, g)[3] for _ in range(2000)]
    assert abs(np.mean(uniform) - 0.5) < 0.03  # Beta(a, a) has mean 0.5
    peaked = [mixup(x, y, 0.2, rng, g)[3] for _ in range(2000)]
    assert stats.kstest(peaked, stats.beta(0.2, 0.2).cdf).pvalue > 0.001
    assert stats.kstest(peaked, stats.uniform.cdf).pvalue < 0.001  # and the test can tell them apart


# --- cutmix ---

@pytest.mark.parametrize("alpha", [0.3, 1.0, 5.0])
def test_cutmix_pixel_fraction_from_the_partner_is_exactly_one_minus_lam(alpha):
    n, h, w = 6, 9, 11
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, h, w)  # sample i is all i
    y, rng, g = torch.arange(n), np.random.default_rng(0), gen()
    at_border = 0
    for _ in range(30):
        xm, _, perm, lam = cutmix(x, y, alpha, rng, g)
        assert 0 <= lam <= 1
        for i in range(n):
            if perm[i] == i:
                continue  # pasting a sample into itself changes nothing to count
            from_partner = xm[i] == perm[i]
            assert ((xm[i] == i) | from_partner).all()
            assert from_partner.sum().item() / (2 * h * w) == pytest.approx(1 - lam, abs=1e-12)
        box = (xm != x).any(0).any(0)  # (H, W): where any sample changed
        rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
        if len(rows):
            assert box.sum() == len(rows) * len(cols)  # one rectangle, the same for the whole batch
            at_border += rows[0] == 0 or rows[-1] == h - 1 or cols[0] == 0 or cols[-1] == w - 1
    assert at_border  # the exact fraction held for boxes clipped at the border too


def test_mix_with_both_alphas_switches_between_mixup_and_cutmix():
    n = 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 6, 6)
    aug, kinds = Augment(mixup=1.0, cutmix=1.0, seed=0), []
    for _ in range(200):
        xm, _, perm, lam = aug.mix(x, torch.arange(n))
        if 0.02 < lam < 0.98:  # a blend clearly differs from a paste
            pasted = ((xm == x) | (xm == x[perm])).all()
            kinds.append(bool(pasted))
    assert 0.3 < np.mean(kinds) < 0.7


# --- configuration checks ---

@pytest.mark.parametrize("switches, layout, channels, classification, key", [
    (dict(jitter=0.3), "image", 1, True, "augment.jitter"),
    (dict(crop_padding=4), "features", 1, True, "augment.crop_padding"),
    (dict(flip=True), "sequence", 1, True, "augment.flip"),
    (dict(mixup=0.2), "image", 3, False, "augment.mixup"),
    (dict(cutmix=1.0), "image", 3, False, "augment.cutmix"),
])
def test_check_names_the_key_that_cannot_apply(switches, layout, channels, classification, key):
    with pytest.raises(UserError, match=key) as error:
        Augment(**switches).check(layout, channels, classification)
    assert "\n" not in str(error.value) and f"set {key}=" in str(error.value)


def test_check_accepts_what_applies_and_init_refuses_negative_values():
    Augment(**ALL_ON).check("image", 3, True)
    Augment().check("features", 7, False)
    with pytest.raises(UserError, match="augment.cutout"):
        Augment(cutout=-1)


# --- device ---

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_whole_pipeline_runs_on_cuda():
    x, y = images().cuda(), torch.arange(8).cuda()
    aug = Augment(**ALL_ON, device="cuda")
    for _ in range(4):
        xm, y1, y2, lam = run(aug, x, y)
        assert xm.shape == x.shape and xm.is_cuda and y2.shape == (8,) and isinstance(lam, float)
    resumed = Augment(**ALL_ON, device="cuda", seed=9)
    resumed.load_state_dict(aug.state_dict())
    assert torch.equal(run(aug, x, y)[0], run(resumed, x, y)[0])
