"""CPU checks of the model semantics (python3 train/tests/test_model.py)."""
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import Config, LCKVModel, Decoder, sequential_logits, save_hf, load_hf  # noqa: E402

torch.manual_seed(0)


def tiny(lt, L):
    c = Config(hidden_size=64, num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               intermediate_size=96, vocab_size=300, layer_types=lt)
    m = LCKVModel(c)
    m.init_weights(1, std=0.2)  # large init so that differences show
    return m.double().eval()


def check(name, a, b, tol):
    d = (a - b).abs().max().item()
    print(f"{name}: max abs diff {d:.3e}")
    assert d < tol, name
    return d


ids = torch.randint(0, 300, (2, 23))
for lt, L in [("", 4), ("0_3_3_3", 4), ("0_1_4_4_4_5", 6), ("0_0_2_2", 4), ("0_1_3_3_5_5", 6)]:
    m = tiny(lt, L)
    seq = sequential_logits(m, ids)
    # n iterations >= T: the parallel iterations reach the fixed point = sequential semantics
    full = m.forward_iterative(ids, n_iter=ids.shape[1] + 1)
    check(f"[{lt or 'std'}] iterative(T+1) vs sequential", full, seq, 1e-9)
    it9 = m.forward_iterative(ids)
    d9 = (it9 - seq).abs().max().item()
    print(f"[{lt or 'std'}] iterative(9) vs sequential: {d9:.3e} (first 9 tokens exact: "
          f"{(it9[:, :9] - seq[:, :9]).abs().max().item():.1e})")
    assert (it9[:, :9] - seq[:, :9]).abs().max().item() < 1e-9
    if m.group is None:
        assert d9 < 1e-9
    # prefill (iterative) + decode: decode after a prefill uses the cache of the last iteration
    lg, kvs = m.forward_iterative(ids[:, :15], return_kv=True)
    dec = Decoder(m, 2, "cpu", torch.float64, 23)
    dec.load_prefill(kvs, 15)
    d = dec.step(ids[:, 15])
    if m.group is None:
        check(f"[{lt or 'std'}] prefill+decode vs sequential", d, seq[:, 15], 1e-9)
    # the train path (grad) equals the prefill path numerically
    h = m.hidden_parallel(ids, 7, 2)
    check(f"[{lt or 'std'}] train path vs iterative(9)", m.logits(h), it9, 1e-9)
    # gradients reach every parameter (k/v of the source through the b=2 iterations)
    m.zero_grad()
    m.logits(m.forward_train(ids)).logsumexp(-1).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    # export / reload round trip (bf16)
    with tempfile.TemporaryDirectory() as d:
        save_hf(m, d)
        r = load_hf(d, dtype=torch.float64)
        assert r.cfg.layer_types == m.cfg.layer_types
        ref = m.to(torch.bfloat16).double()
        check(f"[{lt or 'std'}] reload", r.forward_iterative(ids), ref.forward_iterative(ids), 1e-9)
        if lt:
            names = set(r.hf_state_dict())
            for i, t in enumerate(r.cfg.layer_types):
                has = f"model.layers.{i}.self_attn.k_proj.weight" in names
                assert has == (i in r.cfg.layer_types), (i, has)
print("ok")
