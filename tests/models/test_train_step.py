"""One real training step on the CPU: it learns, checkpointing changes nothing, the batch is
made once, and the bf16 policy keeps fp32 master weights and optimizer state."""

import pytest
import torch

from attnbench.models import build_model, make_train_step
from attnbench.models.train import lm_step_loss

MODELS = [("llama", "sdpa-math"), ("llama", "softmax-naive"),
          ("tnl", "linear-masked"), ("tnl", "linear-recurrent")]


@pytest.mark.parametrize("family,mechanism", MODELS)
def test_loss_decreases_on_a_fixed_batch(family, mechanism):
    model = build_model(family, "tiny", mechanism, "cpu", "fp32")
    step = make_train_step(model, batch=2, seq_len=32, device="cpu", lr=3e-3)
    losses = [step().item() for _ in range(4)]
    assert losses[0] == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.05)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("family,mechanism", [("llama", "sdpa-math"), ("tnl", "linear-masked")])
def test_checkpointing_gives_the_same_gradients(family, mechanism, tokens, grads):
    model = build_model(family, "tiny", mechanism, "cpu", "fp32")
    ids, targets = tokens(512, 2, 24)
    loss, plain = grads(model, ids, targets, checkpointing=False)
    loss_ckpt, ckpt = grads(model, ids, targets, checkpointing=True)
    assert loss_ckpt == loss
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointed_steps_update_the_weights_alike():
    models = [build_model("tnl", "tiny", "linear-masked", "cpu", "fp32") for _ in range(2)]
    steps = [make_train_step(m, 2, 16, "cpu", checkpointing=c)
             for m, c in zip(models, (False, True))]
    for step in steps:
        step()
        step()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_batch_is_made_once_and_seeded():
    model = build_model("llama", "tiny", "softmax-naive", "cpu", "fp32")
    step = make_train_step(model, batch=3, seq_len=10, device="cpu", seed=5)
    inputs = step.inputs.clone()
    step()
    assert torch.equal(step.inputs, inputs)
    assert (step.batch, step.seq_len, step.tokens) == (3, 10, 30)
    assert torch.equal(step.targets[:, :-1], step.inputs[:, 1:])  # next-token targets
    again = make_train_step(model, batch=3, seq_len=10, device="cpu", seed=5)
    assert torch.equal(again.inputs, inputs)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none)


@pytest.mark.parametrize("family,mechanism", [("llama", "sdpa-math"), ("tnl", "linear-masked")])
def test_bf16_policy_keeps_fp32_master_weights_and_adam_state(family, mechanism):
    model = build_model(family, "tiny", mechanism, "cpu", "bf16")
    step = make_train_step(model, batch=2, seq_len=16, device="cpu", lr=3e-3)
    computed = []
    first = model.layers[0].PARTS[1]  # the first attention (token mixer)
    hook = getattr(model.layers[0], first).register_forward_hook(
        lambda module, args, out: computed.append(out.dtype))
    losses = [step() for _ in range(3)]
    hook.remove()
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert computed == [torch.bfloat16] * 3  # the step ran the model in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for state in step.optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_bad_batch_is_refused():
    model = build_model("tnl", "tiny", "linear-masked", "cpu", "fp32")
    with pytest.raises(ValueError, match="batch and seq_len must be >= 1"):
        make_train_step(model, batch=0, seq_len=16, device="cpu")


@pytest.mark.parametrize("family,mechanism", [("llama", "sdpa-math"), ("tnl", "linear-masked")])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_chunked_loss_matches_the_plain_cross_entropy(family, mechanism, chunk, tokens, grads):
    """Tied (tnl) and untied (llama) output projections; chunks that do not divide 48."""
    model = build_model(family, "tiny", mechanism, "cpu", "fp32")
    ids, targets = tokens(512, 2, 24)
    plain_loss, plain = grads(model, ids, targets)
    model.zero_grad(set_to_none=True)
    loss = lm_step_loss(model, ids, targets, loss_chunk=chunk)
    loss.backward()
    torch.testing.assert_close(loss.detach(), plain_loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_loss_in_bf16_is_close_to_the_plain_one(tokens):
    model = build_model("tnl", "tiny", "linear-masked", "cpu", "bf16")
    ids, targets = tokens(512, 2, 24)
    plain = lm_step_loss(model, ids, targets)
    chunked = lm_step_loss(model, ids, targets, loss_chunk=16)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=1e-2, atol=1e-2)
