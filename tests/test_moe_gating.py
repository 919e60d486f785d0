import pytest
import torch

from sam.research.moe import GatingNetwork


pytestmark = pytest.mark.usefixtures("one_thread")


def test_weights_are_sparse_top_k_and_sum_to_one():
    torch.manual_seed(0)
    g = GatingNetwork(8, 5, top_k=2)
    w, idx, aux = g(torch.randn(16, 8))
    assert w.shape == (16, 5) and idx.shape == (16, 2)
    assert torch.equal((w > 0).sum(-1), torch.full((16,), 2))
    assert torch.allclose(w.sum(-1), torch.ones(16))
    assert torch.equal(w.gather(1, idx) > 0, torch.ones(16, 2, dtype=torch.bool))


def test_load_balancing_loss_is_one_when_uniform_and_grows_when_collapsed():
    g = GatingNetwork(4, 4, top_k=1)
    torch.nn.init.zeros_(g.proj.weight)
    torch.nn.init.zeros_(g.proj.bias)
    x = torch.randn(32, 4)
    _, _, aux_uniform = g(x)  # ties -> every token to expert 0, but probs uniform: 4 * (1 * 0.25) = 1
    assert torch.isclose(aux_uniform, torch.tensor(1.0))
    g.proj.bias.data = torch.tensor([10.0, 0.0, 0.0, 0.0])
    _, _, aux_collapsed = g(x)
    assert aux_collapsed > 3.5  # ~ E when one expert takes everything with prob ~1


def test_aux_loss_is_differentiable():
    g = GatingNetwork(4, 3)
    _, _, aux = g(torch.randn(8, 4))
    aux.backward()
    assert g.proj.weight.grad is not None and g.proj.weight.grad.abs().sum() > 0


def test_usage_statistics_count_assignments_and_reset():
    torch.manual_seed(1)
    g = GatingNetwork(4, 3, top_k=2)
    g(torch.randn(10, 4))
    g(torch.randn(6, 4))
    u = g.get_usage_statistics()
    assert u["total_forwards"] == 2 and u["total_tokens"] == 16
    assert sum(u["expert_counts"].values()) == 32 and sum(u["top1_counts"].values()) == 16
    assert abs(sum(u["expert_fractions"].values()) - 1.0) < 1e-9
    g.reset_usage_statistics()
    assert g.get_usage_statistics()["total_forwards"] == 0 and sum(g.get_usage_statistics()["expert_counts"].values()) == 0


def test_top_k_is_capped_by_num_experts():
    g = GatingNetwork(4, 2, top_k=5)
    _, idx, _ = g(torch.randn(3, 4))
    assert idx.shape == (3, 2)
