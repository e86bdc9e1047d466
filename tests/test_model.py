import pytest
import torch

from model import PRESETS, ModelConfig, StemGen, count_parameters

CFG = ModelConfig(n_q=3, bins=32, dim=64, n_heads=4, n_layers=2, max_len=256)


def make(seed=0):
    torch.manual_seed(seed)
    return StemGen(CFG).eval()


def batch(B=2, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(0, CFG.bins, (B, CFG.n_q, T), generator=g)
    tgt = torch.randint(0, CFG.bins + 1, (B, CFG.n_q, T), generator=g)
    inst = torch.randint(0, CFG.n_instruments, (B,), generator=g)
    return ctx, tgt, inst


def test_output_shape_is_batch_levels_time_bins():
    ctx, tgt, inst = batch()
    out = make()(ctx, tgt, inst)
    assert out.shape == (2, CFG.n_q, 24, CFG.bins)
    assert make()(ctx, tgt, inst, level=1).shape == (2, 24, CFG.bins)
    assert torch.allclose(make()(ctx, tgt, inst, level=1), out[:, 1], atol=1e-5)
    per_example = make()(ctx, tgt, inst, level=torch.tensor([2, 0]))   # training: one level per example
    assert torch.allclose(per_example[0], out[0, 2], atol=1e-5)
    assert torch.allclose(per_example[1], out[1, 0], atol=1e-5)


def test_attention_is_bidirectional_a_later_target_changes_position_zero():
    m = make()
    ctx, tgt, inst = batch()
    tgt2 = tgt.clone()
    tgt2[:, :, -1] = (tgt2[:, :, -1] + 1) % CFG.bins
    diff = (m(ctx, tgt, inst)[:, :, 0] - m(ctx, tgt2, inst)[:, :, 0]).abs().max()
    assert diff > 1e-4


def test_context_changes_output_and_dropping_it_removes_its_influence():
    m = make()
    ctx, tgt, inst = batch()
    ctx2 = (ctx + 1) % CFG.bins
    assert (m(ctx, tgt, inst) - m(ctx2, tgt, inst)).abs().max() > 1e-4
    dropped = torch.ones(2, dtype=torch.bool)
    assert torch.equal(m(ctx, tgt, inst, dropped), m(ctx2, tgt, inst, dropped))
    # dropping only the first example's context leaves the second example's output as it was
    part = torch.tensor([True, False])
    assert torch.allclose(m(ctx, tgt, inst, part)[1], m(ctx, tgt, inst)[1], atol=1e-6)


def test_instrument_condition_changes_output():
    m = make()
    ctx, tgt, inst = batch()
    null = torch.full_like(inst, CFG.n_instruments - 1)
    assert (m(ctx, tgt, inst) - m(ctx, tgt, null)).abs().max() > 1e-4


def test_paper_preset_has_about_250M_parameters():
    cfg = PRESETS["paper"]
    # the paper's values (Sec. 3): 20 layers of width 1024 with 16 heads, Encodec's 4 levels of 2048 entries,
    # 18 instrument entries (NOTES.md 1: Slakh's 17 classes and the null instrument)
    assert (cfg.dim, cfg.n_heads, cfg.n_layers, cfg.n_q, cfg.bins, cfg.n_instruments) == (1024, 16, 20, 4, 2048, 18)
    with torch.device("meta"):
        m = StemGen(cfg)
    assert 230e6 <= count_parameters(m) <= 280e6


def test_model_has_no_bias_parameters():
    names = [n for n, _ in make().named_parameters()]
    assert not any(n.endswith(".bias") for n in names)


@pytest.mark.slow
def test_tiny_model_overfits_one_fixed_batch():
    """The pieces fit together: masked-token loss on one batch falls by a clear margin."""
    from masking import mask_target
    torch.manual_seed(0)
    cfg = ModelConfig(n_q=2, bins=16, dim=64, n_heads=4, n_layers=2, max_len=64)
    m = StemGen(cfg)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, cfg.bins, (8, cfg.n_q, 16), generator=g)
    tgt = (ctx * 3 + 1) % cfg.bins   # a target that is a function of the context
    inst = torch.randint(0, 17, (8,), generator=g)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)

    def loss_fn():
        masked, loss_mask, _ = mask_target(tgt, cfg.mask_id, g)
        logits = m(ctx, masked, inst)
        return torch.nn.functional.cross_entropy(logits[loss_mask], tgt[loss_mask])


    first = sum(loss_fn().item() for _ in range(5)) / 5
    for _ in range(120):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = sum(loss_fn().item() for _ in range(5)) / 5
    assert last < 0.3 * first


def test_codeword_init_makes_a_frames_embedding_a_scaled_rotation_of_its_latent():
    """Distances between frames' summed level embeddings are their latents' distances times one scale."""
    cfg = ModelConfig(n_q=3, bins=32, dim=64, n_heads=4, n_layers=1, max_len=16)    # channel width 32
    g = torch.Generator().manual_seed(0)
    codewords = torch.randn(3, 32, 24, generator=g) * torch.tensor([4.0, 2.0, 1.0])[:, None, None]
    m = StemGen(cfg)
    m.init_from_codewords(codewords, g)
    codes = torch.randint(0, 32, (1, 3, 16), generator=g)                            # [1, Q, T]
    emb = m.context_embed(codes)[0]                                                  # [T, ch]
    latent = sum(codewords[q][codes[0, q]] for q in range(3))                        # [T, D]
    ratio = torch.pdist(emb) / torch.pdist(latent)
    assert torch.allclose(ratio, ratio.mean(), rtol=1e-4)
    assert torch.allclose(m.target_embed(codes)[0], emb)                             # both channels alike
    with pytest.raises(ValueError, match="do not fit"):
        m.init_from_codewords(torch.randn(2, 32, 24), g)


def test_the_models_instrument_table_size_is_the_class_tables():
    """model.py keeps Sec. 3's 18 instrument entries in ModelConfig rather than importing the class table."""
    from audio.instruments import INSTRUMENTS, N_INSTRUMENTS, NULL_INSTRUMENT
    assert ModelConfig().n_instruments == N_INSTRUMENTS == len(INSTRUMENTS) + 1 == NULL_INSTRUMENT + 1 == 18
