"""DiffuMIN's mechanism beyond the common contract."""

from __future__ import annotations

import pytest
import torch

from lifelong.models import build_model
from lifelong.models.diffumin import OrthogonalInterestExtractor, contrastive_loss, diffusion_loss
from lifelong.streams import STREAMS

from helpers import assert_candidates_score_as_forward_passes, random_batch
from model_configs import TINY_CONFIGS, TINY_VOCAB


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model({"model_type": "diffumin", **TINY_VOCAB, **TINY_CONFIGS["diffumin"], **overrides})


def test_channels_are_orthonormal_and_routing_covers_exactly_the_real_behaviors():
    torch.manual_seed(0)
    omie = OrthogonalInterestExtractor(dim=8, channels=3, top_per_channel=2)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 1, 0, 3])[:, None]  # (5, 6)
    history = torch.randn(5, 6, 8) * mask.unsqueeze(-1)
    interests, channels, routing, kept = omie(history, mask, torch.randn(5, 8))
    gram = channels.transpose(1, 2) @ channels  # (B, c, c)
    torch.testing.assert_close(gram, torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    assert torch.equal(routing.sum(dim=-1), mask.long())  # one channel per real behavior, none at padding
    assert not kept.transpose(1, 2)[~mask].any()
    assert (kept.sum(dim=-1) <= 2).all()  # top_per_channel
    assert (kept <= routing.transpose(1, 2)).all()  # only routed behaviors are kept
    # each channel keeps min(top_per_channel, routed) behaviors, the most relevant ones, mean-pooled
    routed = routing.sum(dim=1)  # (B, c)
    assert torch.equal(kept.sum(dim=-1), routed.clamp(max=2))
    relevance = torch.einsum("btd,bdc->bct", history, channels)
    for b in range(5):
        for c in range(3):
            chosen = relevance[b, c][kept[b, c]]
            dropped = relevance[b, c][routing[b, :, c] & ~kept[b, c]]
            if len(chosen) and len(dropped):
                assert chosen.min() >= dropped.max()
            expected = history[b][kept[b, c]].mean(dim=0) if len(chosen) else torch.zeros(8)
            torch.testing.assert_close(interests[b, c], expected, atol=1e-6, rtol=1e-5)
    assert (interests[3] == 0).all()  # empty history -> zero interests


def test_channels_are_deterministic_with_positive_r_diagonal():
    torch.manual_seed(1)
    omie = OrthogonalInterestExtractor(dim=8, channels=4, top_per_channel=3)
    target = torch.randn(3, 8)
    channels = omie.orthonormal_channels(target)
    basis = omie.projection(target).view(3, 8, 4)
    r = channels.transpose(1, 2) @ basis  # (B, c, c) = R
    assert (torch.diagonal(r, dim1=-2, dim2=-1) > 0).all()
    torch.testing.assert_close(torch.triu(r), r, atol=1e-5, rtol=0)


def test_channels_train_the_projection_but_send_no_gradient_to_the_target():
    torch.manual_seed(2)
    omie = OrthogonalInterestExtractor(dim=8, channels=3, top_per_channel=3)
    target = (torch.randn(2, 8) * 1e-2).requires_grad_()
    omie.orthonormal_channels(target).pow(3).sum().backward()
    assert target.grad is None  # Q's gradient w.r.t. e_s scales with 1 / ||e_s W||: cut
    assert omie.projection.weight.grad.abs().sum() > 0


def test_forward_process_is_clean_at_step_zero_and_noise_at_the_last_step():
    generator = tiny().generator
    x0 = torch.randn(64, 3, 8)
    noise = torch.randn(64, 3, 8)
    torch.testing.assert_close(generator.q_sample(x0, torch.zeros(64, dtype=torch.long), noise), x0)
    last = generator.q_sample(x0, torch.full((64,), 1000, dtype=torch.long), noise)
    assert generator.alpha_bar[-1].sqrt() < 0.01
    torch.testing.assert_close(last, noise, atol=0.05, rtol=0)
    corr = torch.corrcoef(torch.stack([last.flatten(), x0.flatten()]))[0, 1]
    assert abs(corr) < 0.05
    assert generator.alpha_bar.shape == (1001,) and (generator.alpha_bar.diff() < 0).all()


def test_contrastive_loss_is_lowest_when_pairs_match():
    torch.manual_seed(2)
    r = torch.randn(5, 3, 8)
    matched = contrastive_loss(r, r, 0.05)
    for shift in range(1, 5):
        shuffled = r[torch.roll(torch.arange(5), shift)]
        assert matched < contrastive_loss(r, shuffled, 0.05)
    assert contrastive_loss(r[:1], r[:1], 0.05) == 0  # no negatives with one sample


def test_contrastive_negatives_exclude_the_same_users_other_samples():
    torch.manual_seed(3)
    r, generated = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    distinct = torch.tensor([10, 11, 12, 13])
    torch.testing.assert_close(contrastive_loss(r, generated, 0.05, distinct), contrastive_loss(r, generated, 0.05))
    users = torch.tensor([10, 10, 12, 13])  # samples 0 and 1 belong to one user
    moved = generated.clone()
    moved[1] = 5 * r[0]  # sample 1's r* now looks like sample 0's interest: a false negative for sample 0
    row_cut = contrastive_loss(r, moved, 0.05, users) - contrastive_loss(r, generated, 0.05, users)
    plain_cut = contrastive_loss(r, moved, 0.05) - contrastive_loss(r, generated, 0.05)
    assert plain_cut > row_cut  # without the mask the look-alike raises sample 0's loss


C, D = 3, 8  # the tiny config's channels and behavior width (2 * embedding_dim)


def spy_on_the_mlp_input(model) -> list[torch.Tensor]:
    """Every input of the prediction MLP, ``[r, r*, short-term, target]`` per row, as it is called."""
    inputs = []
    model.dnn.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    return inputs


def interest_blocks(mlp_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r and r* (N, c, D) from the MLP input."""
    return mlp_input[:, : C * D].view(-1, C, D), mlp_input[:, C * D : 2 * C * D].view(-1, C, D)


def unit_rms(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r / (|r| / sqrt(D)) per channel (0 for an empty channel) and that scale (N, c, 1)."""
    scale = r.norm(dim=-1, keepdim=True).clamp(min=1e-6) / D**0.5
    return r / scale, scale


def test_inference_generation_reads_the_interest_at_a_unit_scale():
    """The generator sees unit-RMS interests whatever the embeddings' scale (1e-2 at initialisation,
    10 after multiplying the tables by 1000), and r* comes back at r's scale: r* scales with r."""
    model = tiny().eval()
    batch = random_batch(seed=6)
    calls, generate = [], model.generator.generate

    def spy(clean, channels):
        calls.append((clean.detach(), generate(clean, channels).detach()))
        return calls[-1][1]

    model.generator.generate = spy
    inputs = spy_on_the_mlp_input(model)
    with torch.no_grad():
        model(batch)
        for table in model.embedding.parameters():
            table.mul_(1000.0)
        model(batch)
    (seen_small, out_small), (seen_big, out_big) = calls
    (r_small, star_small), (r_big, star_big) = (interest_blocks(x) for x in inputs)
    real = r_small.norm(dim=-1) > 0  # (N, c) channels with behaviors (the length-1 row leaves some empty)
    assert real.any() and not real.all()
    rms = r_small.pow(2).mean(dim=-1).sqrt()
    assert float(rms[real].max()) < 0.1  # the interests are far from unit scale, ...
    torch.testing.assert_close(r_big, 1000.0 * r_small, rtol=1e-4, atol=1e-6)  # ... and 1000 times that here
    for seen, r in ((seen_small, r_small), (seen_big, r_big)):  # the denoiser sees r / (|r| / sqrt(D))
        torch.testing.assert_close(seen.pow(2).mean(dim=-1)[real], torch.ones(int(real.sum())))
        torch.testing.assert_close(seen, unit_rms(r)[0], rtol=1e-4, atol=1e-5)
        assert torch.equal(seen[~real], torch.zeros_like(seen[~real]))
    torch.testing.assert_close(seen_big, seen_small, rtol=1e-4, atol=1e-5)
    for out, star, r in ((out_small, star_small, r_small), (out_big, star_big, r_big)):  # r* = output * scale
        torch.testing.assert_close(star, out * unit_rms(r)[1], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(star_big[real], 1000.0 * star_small[real], rtol=1e-3, atol=1e-5)  # homogeneous in r
    with torch.no_grad():  # and r* follows r
        channels = model.extractor.orthonormal_channels(model.embedding(batch.target_items, batch.target_cates))
        assert not torch.allclose(generate(seen_small, channels), generate(-seen_small, channels))


def test_evaluation_is_deterministic_and_start_step_zero_is_one_clean_prediction():
    model = tiny(infer_start_step=0).eval()
    batch = random_batch(seed=4)
    history = model.embedding(batch.history_items, batch.history_cates)
    target = model.embedding(batch.target_items, batch.target_cates)
    interests, channels, _, _ = model.extractor(history, batch.history_mask, target)
    expected = model.generator.denoise(interests, torch.zeros(len(batch), dtype=torch.long), channels)
    assert torch.equal(model.generator.generate(interests, channels), expected)
    assert torch.equal(model(batch).logits, model(batch).logits)


def test_inference_runs_evenly_spaced_ddim_steps():
    model = tiny(infer_start_step=100, infer_steps=10).eval()
    assert model.generator.infer_schedule == list(range(100, -1, -10))
    # the last x_0 prediction is made at step 10 from the DDIM iterate
    calls = []
    original = model.generator.denoise

    def spy(noisy, step, channels):
        calls.append(int(step[0]))
        return original(noisy, step, channels)

    model.generator.denoise = spy
    model(random_batch(seed=5))
    assert calls == list(range(100, 0, -10))


def test_training_returns_weighted_diffusion_and_contrastive_losses():
    model = tiny().train()
    batch = random_batch(batch_size=8, seed=6)
    calls, q_sample, denoise = {}, model.generator.q_sample, model.generator.denoise

    def spy_q_sample(x0, step, noise):
        calls.update(x0=x0.detach(), step=step)
        return q_sample(x0, step, noise)

    def spy_denoise(noisy, step, channels):
        calls.update(predicted=denoise(noisy, step, channels))
        return calls["predicted"]

    model.generator.q_sample, model.generator.denoise = spy_q_sample, spy_denoise
    batch.users = torch.tensor([7, 7, 8, 9, 10, 11, 12, 13])  # samples 0 and 1: one user, not each other's negative
    inputs = spy_on_the_mlp_input(model)
    aux = model(batch).aux_losses
    assert set(aux) == {"diffusion", "contrastive"}
    r, r_star = interest_blocks(inputs[0])
    clean, scale = unit_rms(r)
    # L_diff: 0.01 x the MSE of the x_0 prediction against the clean unit-RMS interest (not the noisy one),
    # at a step drawn from 1 .. infer_start_step
    torch.testing.assert_close(calls["x0"], clean, rtol=1e-4, atol=1e-5)
    assert 1 <= int(calls["step"].min()) and int(calls["step"].max()) <= 100
    predicted = calls["predicted"].detach()
    present = r.abs().sum(dim=-1) > 0  # (B, c) channels that pooled a behavior
    assert not present.all()  # the batch has empty channels (a history of one behavior fills one channel)
    error = (predicted - clean).pow(2).mean(dim=-1)  # (B, c)
    torch.testing.assert_close(aux["diffusion"], 0.01 * error[present].mean())  # over the non-empty channels
    # L_cl: 0.001 x InfoNCE between r and r* (the prediction at r's scale), other users' samples as negatives
    torch.testing.assert_close(r_star, predicted * scale, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(aux["contrastive"], 0.001 * contrastive_loss(r, r_star, 0.05, batch.users, present))
    assert model.eval()(batch).aux_losses == {}
    assert set(tiny(use_contrastive=False).train()(batch).aux_losses) == {"diffusion"}



def test_empty_channels_are_left_out_of_the_diffusion_and_contrastive_losses():
    """An empty channel's interest is a zero placeholder: what the denoiser or r* make of it changes no loss,
    and the losses average over the non-empty (sample, channel) pairs."""
    g = torch.Generator().manual_seed(8)
    predicted, clean, r, r_star = (torch.randn(4, 3, 8, generator=g) for _ in range(4))
    present = torch.tensor([[True, True, False], [True, False, False], [True, True, True], [False, True, True]])
    users = torch.tensor([1, 2, 3, 4])
    # the diffusion loss is the squared error averaged over D and the present channels only
    error = (predicted - clean).pow(2).mean(dim=-1)
    torch.testing.assert_close(diffusion_loss(predicted, clean, present), error[present].mean())
    # the contrastive loss is the mean over present anchors, with the present channels of others as negatives
    logits = torch.einsum("bcd,jcd->cbj", torch.nn.functional.normalize(r, dim=-1),
                          torch.nn.functional.normalize(r_star, dim=-1)) / 0.05  # (c, B, B)
    terms = [torch.logsumexp(logits[i, b][present[:, i]], dim=0) - logits[i, b, b]
             for i in range(3) for b in range(4) if present[b, i]]
    torch.testing.assert_close(contrastive_loss(r, r_star, 0.05, users, present), torch.stack(terms).mean())
    # perturbing the empty channels changes neither loss
    moved_prediction, moved_r, moved_star = predicted.clone(), r.clone(), r_star.clone()
    moved_prediction[~present] += 3.0
    moved_r[~present] = torch.randn(int((~present).sum()), 8, generator=g)
    moved_star[~present] = 5 * r[0, 0]  # a look-alike of sample 0's channel 0 where the channel is empty
    torch.testing.assert_close(diffusion_loss(moved_prediction, clean, present), diffusion_loss(predicted, clean, present))
    torch.testing.assert_close(contrastive_loss(moved_r, moved_star, 0.05, users, present),
                               contrastive_loss(r, r_star, 0.05, users, present))
    assert float(diffusion_loss(predicted, clean, torch.zeros_like(present))) == 0.0
    assert float(contrastive_loss(r, r_star, 0.05, users, torch.zeros_like(present))) == 0.0


def test_model_losses_ignore_what_the_denoiser_predicts_for_an_empty_channel():
    """In the model: shifting the denoiser's prediction at empty channels leaves L_diff and L_cl unchanged."""
    batch = random_batch(batch_size=8, seed=6)
    batch.users = torch.arange(8) + 20

    def losses(shift: float) -> dict[str, torch.Tensor]:
        model = tiny().train()
        present = {}
        extract, denoise = model.extractor.forward, model.generator.denoise

        def spy_extract(history, mask, target):
            out = extract(history, mask, target)
            present["mask"] = out[3].any(dim=-1).reshape(-1, out[0].shape[-2])  # (B * K, c)
            return out

        def shifted_denoise(noisy, step, channels):
            return denoise(noisy, step, channels) + shift * (~present["mask"]).unsqueeze(-1)

        model.extractor.forward, model.generator.denoise = spy_extract, shifted_denoise
        STREAMS.reset(seed=1, epoch=0)
        aux = model(batch).aux_losses
        assert not present["mask"].all()  # the batch has empty channels
        return aux

    base, shifted = losses(0.0), losses(4.0)
    torch.testing.assert_close(shifted["diffusion"], base["diffusion"])
    torch.testing.assert_close(shifted["contrastive"], base["contrastive"])


def test_diffusion_draws_come_from_their_own_stream_not_the_global_generator():
    """The training step and noise of the diffusion come from STREAMS("diffusion"): dropout (which draws
    from torch's global generator) or another global seed does not change them, batch after batch."""
    batches = [random_batch(batch_size=8, seed=s) for s in (6, 7)]

    def diffusion_losses(dropout: float, global_seed: int) -> list[torch.Tensor]:
        model = tiny(dropout=dropout).train()
        steps = []
        q_sample = model.generator.q_sample
        model.generator.q_sample = lambda x0, step, noise: steps.append(step) or q_sample(x0, step, noise)
        STREAMS.reset(seed=3, epoch=0)
        torch.manual_seed(global_seed)
        losses = [model(batch).aux_losses["diffusion"].detach() for batch in batches]
        return [*losses, *steps]

    reference = diffusion_losses(0.0, 0)
    for dropout, global_seed in ((0.5, 0), (0.0, 1)):
        for got, expected in zip(diffusion_losses(dropout, global_seed), reference):
            torch.testing.assert_close(got, expected)
    STREAMS.reset(seed=4, epoch=0)  # another run seed draws other noise
    model = tiny(dropout=0.0).train()
    assert not torch.equal(model(batches[0]).aux_losses["diffusion"], reference[0])

def test_without_diffusion_there_is_no_generator_and_no_auxiliary_loss():
    model = tiny(use_diffusion=False).train()
    assert model.generator is None
    assert not any(name.startswith("generator") for name, _ in model.named_parameters())
    assert model(random_batch(batch_size=8, seed=7)).aux_losses == {}
    full = tiny()
    c, d = 3, 8
    assert full.dnn.layers[0].in_features - model.dnn.layers[0].in_features == c * d  # no r* in the MLP input


def test_short_term_branch_reads_only_the_most_recent_behaviors():
    model = tiny(use_diffusion=False).eval()  # short_length 3
    batch = random_batch(batch_size=4, width=7, seed=8)
    history = model.embedding(batch.history_items, batch.history_cates)
    target = model.embedding(batch.target_items, batch.target_cates).unsqueeze(1)  # (B, 1, D)

    def short_term(behaviors):
        return model.short_term(*model.recent_tokens(behaviors, batch.history_mask), target)[:, 0]

    before = short_term(history)
    changed = history.clone()
    changed[0, :4] = torch.randn(4, 8)  # sample 0 has 7 events; the recent three are 4, 5, 6
    torch.testing.assert_close(short_term(changed), before)
    changed[0, 6] += 1.0
    assert not torch.allclose(short_term(changed)[0], before[0])


def test_dice_moving_averages_update_at_the_configured_rate():
    from lifelong.nn.layers import Dice

    rates = {m.norm.momentum for m in tiny(dice_momentum=0.25).modules() if isinstance(m, Dice)}
    assert rates == {0.25}


@pytest.mark.parametrize("field, value", [("channels", 9), ("heads", 3), ("infer_start_step", 1001),
                                          ("temperature", 0.0), ("top_per_channel", 0), ("dice_momentum", 0.0)])
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


@pytest.mark.parametrize("options", [{}, {"use_diffusion": False}, {"infer_start_step": 0}, {"use_contrastive": False}])
def test_variants_score_several_candidates_as_forward_passes(options):
    model = tiny(**options)
    with torch.no_grad():  # O(1) embeddings: the 1e-2 init hides the candidate's effect
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
    assert_candidates_score_as_forward_passes(model.eval(), random_batch(batch_size=6, seed=48), k=4)


def test_extractor_with_k_targets_equals_k_calls_with_one():
    torch.manual_seed(9)
    omie = OrthogonalInterestExtractor(dim=8, channels=3, top_per_channel=2)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 0])[:, None]
    history = torch.randn(3, 6, 8) * mask.unsqueeze(-1)
    targets = torch.randn(3, 4, 8)
    together = omie(history, mask, targets)  # each with a K dimension after B
    for j in range(4):
        for joint, alone in zip(together, omie(history, mask, targets[:, j])):
            torch.testing.assert_close(joint[:, j], alone)
