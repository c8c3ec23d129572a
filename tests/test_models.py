"""Every registered model on random tiny cubes: shapes, valid attention, gradients, determinism, checkpoints."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from glimpse.train.cli import main
from glimpse.train.losses import group_sparsity, model_loss
from glimpse.train.models import MODELS, ModelSpec, build_model

# distinct sizes so that a swapped axis shows up as a shape error
B, T, C, K, CLASSES, HIDDEN = 2, 6, 12, 4, 3, 10


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    fields = {f.name for f in dataclasses.fields(MODELS[name].config)}
    torch.manual_seed(seed)
    return build_model(name, channels=C, size=K, classes=CLASSES, **({"hidden": HIDDEN} if "hidden" in fields else {}))


def cubes(name: str, seed: int = 1, batch: int = B) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, T, C, K, K, generator=generator) for _ in MODELS[name].streams]


def labels(seed: int = 2) -> torch.Tensor:
    return torch.randint(0, CLASSES, (B,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_registry_entry(name):
    spec = MODELS[name]
    assert spec.name == name
    assert spec.paper and spec.equations
    assert set(spec.streams) <= {"rgb", "flow", "flow_cnn"}
    assert spec.frames >= spec.skip >= 1


@pytest.mark.parametrize("name", MODELS)
def test_output_shapes_and_attention(name):
    spec, model = MODELS[name], tiny(name)
    model.eval()
    out = model(*cubes(name))
    steps = T if spec.logits == "step" else 1
    assert out.logits.shape == (B, steps, CLASSES)
    assert torch.isfinite(out.logits).all()
    assert (out.attention is not None) == spec.attention
    if out.attention is not None:
        assert out.attention.shape == (B, T, K, K)
        assert bool((out.attention >= 0).all())
        assert torch.allclose(out.attention.sum((2, 3)), torch.ones(B, T), atol=1e-5)
    for penalty in out.aux_losses.values():
        assert penalty.shape == (B,)
        assert bool((penalty >= 0).all()) and torch.isfinite(penalty).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = tiny(name)
    model.train()
    torch.manual_seed(3)
    model_loss(model(*cubes(name)), labels()).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name}: {pname} got a zero gradient"


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_output(name):
    def run(seed):
        model = tiny(name, seed)
        model.train()  # dropout on: the seed must fix its masks too
        torch.manual_seed(seed)
        return model(*cubes(name)).logits

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(5))


@pytest.mark.parametrize("name", MODELS)
def test_batch_items_are_independent(name):
    """The recurrence is vectorized over the batch: a batch gives what its clips give one by one."""
    model = tiny(name)
    model.eval()
    both = cubes(name)
    out = model(*both)
    for i in range(B):
        alone = model(*[cube[i : i + 1] for cube in both])
        assert torch.allclose(out.logits[i : i + 1], alone.logits, atol=1e-5)
        if out.attention is not None:
            assert torch.allclose(out.attention[i : i + 1], alone.attention, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_rebuild_from_checkpointed_config(name):
    model = tiny(name)
    model.eval()
    assert isinstance(model.config, MODELS[name].config)
    saved = json.loads(json.dumps(dataclasses.asdict(model.config)))  # what a checkpoint holds
    rebuilt = build_model(name, **saved)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert rebuilt.config == model.config
    assert torch.equal(rebuilt(*cubes(name)).logits, model(*cubes(name)).logits)


@pytest.mark.parametrize("name", MODELS)
def test_wrong_inputs_are_named(name):
    model = tiny(name)
    with pytest.raises(ValueError, match=r"expected \d input stream"):
        model(*cubes(name), torch.zeros(B, T, C, K, K))
    bad = [torch.zeros(B, T, C + 1, K, K) for _ in MODELS[name].streams]
    with pytest.raises(ValueError, match=f"must be \\(batch, time, {C}, {K}, {K}\\)"):
        model(*bad)


def test_build_model_rejects_unknown_override_and_model():
    with pytest.raises(TypeError, match=r"'softattn' has no config field hiden; its fields are: .*hidden"):
        build_model("softattn", channels=C, size=K, classes=CLASSES, hiden=8)
    with pytest.raises(KeyError, match="registered models: .*regattn"):
        build_model("sharma", channels=C, size=K, classes=CLASSES)


def test_overrides_reach_the_model():
    model = build_model("softattn", channels=C, size=K, classes=CLASSES, hidden=7, layers=2, lam=0.5)
    assert (model.config.hidden, model.config.layers, model.config.lam) == (7, 2, 0.5)
    assert [cell.hidden_size for cell in model.stack.cells] == [7, 7]


def test_spec_must_agree_with_its_config():
    spec = MODELS["cham"]
    with pytest.raises(ValueError, match="spec skip=3 but config default skip=2"):
        ModelSpec("cham3", spec.build, spec.config, spec.paper, spec.equations, skip=3)


def test_regattn_first_map_uniform_tanh_logits_and_penalty():
    model = tiny("regattn")
    model.eval()
    out = model(*cubes("regattn"))
    assert torch.allclose(out.attention[:, 0], torch.full((B, K, K), 1 / K**2))  # a_1 = 1/K^2 (Eq. 8)
    assert bool((out.logits.abs() <= 1).all())  # softmax(tanh(B h2_t)) (Eq. 7)
    expected = model.config.lam * group_sparsity(out.attention, model.blocks)
    assert torch.allclose(out.aux_losses["group_sparsity"], expected)


def test_regattn_default_blocks_cover_the_map_and_an_unsound_n_is_refused():
    assert build_model("regattn", channels=C, size=8, classes=CLASSES, hidden=HIDDEN).blocks == 4  # the paper's
    assert build_model("regattn", channels=C, size=7, classes=CLASSES, hidden=HIDDEN).blocks == 3
    with pytest.raises(ValueError, match=r"N=4 blocks on the 7x7 map leave blocks of one cell.*--blocks 3"):
        build_model("regattn", channels=C, size=7, classes=CLASSES, hidden=HIDDEN, blocks=4)


def released_code_attention(model, X, blank_start=False):
    """Sharma's released code (src/actrec.py _step), written independently: one LSTM, tanh-affine initial state
    (or, with ``blank_start``, h_0 = c_0 = 0)."""
    p = dict(model.named_parameters())
    B, T, Cc, K_, _ = X.shape
    ctx = X.flatten(3).transpose(2, 3)  # (B, T, P, C)
    mean = ctx.mean((1, 2))
    h = torch.tanh(mean @ p["init_h.weight"].T + p["init_h.bias"])
    c = torch.tanh(mean @ p["init_c.weight"].T + p["init_c.bias"])
    if blank_start:
        h, c = torch.zeros_like(h), torch.zeros_like(c)
    cell = model.stack.cells[0]
    alphas, logits = [], []
    for t in range(T):
        pctx = ctx[:, t] @ p["from_input.weight"].T + p["from_input.bias"]
        deeper = len(model.deeper)
        for lidx in range(deeper):  # n_layers_att - 1 more layers, tanh between them (src/actrec.py _step)
            pctx = pctx @ p[f"deeper.{lidx}.weight"].T + p[f"deeper.{lidx}.bias"]
            pctx = torch.tanh(pctx) if lidx < deeper - 1 else pctx
        pctx = pctx + (h @ p["from_state.weight"].T)[:, None]
        alpha = torch.softmax((torch.tanh(pctx) @ p["score.weight"].T)[..., 0], -1)  # (B, P)
        z = (alpha[..., None] * ctx[:, t]).sum(1)  # (B, C)
        gates = z @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
        i, f, g, o = gates.chunk(4, -1)  # torch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hid = torch.tanh(h @ p["classify.0.weight"].T + p["classify.0.bias"])
        logits.append(hid @ p["classify.3.weight"].T + p["classify.3.bias"])
        alphas.append(alpha)
    return torch.stack(logits, 1), torch.stack(alphas, 1).view(B, T, K_, K_)


def test_softattn_code_is_the_released_codes_content_attention():
    model = tiny("softattn_code")
    model.eval()
    X = cubes("softattn_code")[0]
    out = model(X)
    logits, alphas = released_code_attention(model, X)
    assert torch.allclose(out.logits, logits, atol=1e-5) and torch.allclose(out.attention, alphas, atol=1e-6)
    assert len(model.stack.cells) == 1 and out.aux_losses == {}  # one layer; alpha_c = 0 in its UCF-11 script
    moved = X.clone()
    moved[0, 0, :, 0, 0] += 5.0  # frame 1 changes, the video's mean feature (and so h_0) does not
    moved[0, 1, :, 0, 0] -= 5.0  # softattn_code's first map reads frame 1; softattn's (Eq. 1) only h_0
    assert not torch.allclose(model(moved).attention[0, 0], out.attention[0, 0])
    eq1 = tiny("softattn")
    eq1.eval()
    assert torch.allclose(eq1(moved).attention[0, 0], eq1(X).attention[0, 0])


def test_softattn_code_with_three_attention_layers_is_the_hmdb51_scripts_attention():
    torch.manual_seed(0)
    model = build_model("softattn_code", channels=C, size=K, classes=CLASSES, hidden=HIDDEN, att_layers=3)
    model.eval()
    X = cubes("softattn_code")[0]
    logits, alphas = released_code_attention(model, X)
    assert len(model.deeper) == 2
    assert torch.allclose(model(X).logits, logits, atol=1e-5) and torch.allclose(model(X).attention, alphas, atol=1e-6)


def test_softattn_code_draws_its_weights_as_the_released_code():
    torch.manual_seed(0)
    model = build_model("softattn_code", channels=64, size=K, classes=CLASSES, hidden=32)
    eye = torch.eye(32)
    cell = model.stack.cells[0]
    for gate in cell.weight_hh.chunk(4, 0):  # U: each gate's (dim, dim) block orthogonal (ortho_weight)
        assert torch.allclose(gate @ gate.T, eye, atol=1e-5)
    square = model.classify[0].weight  # ff_logit_lstm, dim x dim_out with dim_out = dim: norm_weight's ortho case
    assert torch.allclose(square @ square.T, eye, atol=1e-5)
    for weight in (cell.weight_ih, model.from_input.weight, model.init_h.weight, model.score.weight):
        assert abs(float(weight.std()) - 0.01) < 0.002 and abs(float(weight.mean())) < 0.002  # N(0, 0.01^2)
    for name, param in model.named_parameters():
        if param.dim() == 1:
            assert not param.any(), f"{name}: the code's biases start at zero"
    plain = build_model("softattn_code", channels=64, size=K, classes=CLASSES, hidden=32, weight_init="torch")
    assert abs(float(plain.from_input.weight.std()) - 0.01) > 0.02  # PyTorch's default draws wider


def test_softattn_code_with_a_blank_start_reads_the_class_only_through_its_attention():
    torch.manual_seed(0)
    model = build_model("softattn_code", channels=C, size=K, classes=CLASSES, hidden=HIDDEN, init="zero",
                        weight_init="torch")  # PyTorch's wider weights: the start's effect is well above 1e-3
    model.eval()
    X = cubes("softattn_code")[0]
    logits, alphas = released_code_attention(model, X, blank_start=True)
    out = model(X)
    assert torch.allclose(out.logits, logits, atol=1e-5) and torch.allclose(out.attention, alphas, atol=1e-6)
    assert not torch.allclose(released_code_attention(model, X)[0], logits, atol=1e-3)  # the start matters
    with pytest.raises(ValueError, match="init must be 'mean' or 'zero'"):
        build_model("softattn_code", channels=C, size=K, classes=CLASSES, hidden=HIDDEN, init="noise")


@pytest.mark.parametrize(("name", "args"), [("softattn_code", {"weight_init": "torch"}),
                                           ("regattn", {"attention": "content", "blocks": 2})])
def test_a_temperature_below_one_sharpens_the_first_map_as_a_power_of_the_plain_one(name, args):
    maps = {}
    for temperature in (1.0, 0.5):
        torch.manual_seed(0)  # the same weights at both temperatures
        model = build_model(name, channels=C, size=K, classes=CLASSES, hidden=HIDDEN, temperature=temperature, **args)
        model.eval()
        maps[temperature] = model(*cubes(name)).attention[:, 0].flatten(1)  # (B, K*K), the map before any read
    squared = maps[1.0] ** 2  # softmax(z / 0.5) = softmax(z)^2 / sum softmax(z)^2
    assert torch.allclose(maps[0.5], squared / squared.sum(-1, keepdim=True), atol=1e-6)
    assert not torch.allclose(maps[0.5], maps[1.0], atol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        build_model(name, channels=C, size=K, classes=CLASSES, temperature=0.0, **args)


def test_regattn_content_attention_and_block_sparsity_written_independently():
    torch.manual_seed(0)
    model = build_model("regattn", channels=C, size=K, classes=CLASSES, hidden=HIDDEN, attention="content",
                        penalty="sqrt_mass", blocks=2, lam=0.5)
    model.eval()
    X = cubes("regattn")[0]
    out = model(X)
    p = dict(model.named_parameters())
    ctx = X.flatten(3).transpose(2, 3)  # (B, T, P, C)
    v = torch.tanh((ctx @ p["squeeze.weight"].T + p["squeeze.bias"])[..., 0] @ p["describe.0.weight"].T
                   + p["describe.0.bias"])  # (B, T, H): MLP of the 1x1 conv's K x K map (Quan et al. Sec. 4.4)
    h = torch.zeros(B, HIDDEN)
    state = None
    for t in range(T):
        a = torch.softmax(torch.cat([h, v[:, t]], -1) @ p["locate.weight"].T, -1)  # (B, P)
        assert torch.allclose(out.attention[:, t].flatten(1), a, atol=1e-6)
        state = model.stack.step((a[..., None] * ctx[:, t]).sum(1), state)
        h = state[-1][0]
    mass = out.attention.unflatten(2, (2, 2)).unflatten(4, (2, 2)).sum((3, 5))  # (B, T, 2, 2): 2 x 2 blocks
    expected = 0.5 * mass.sqrt().sum((1, 2, 3))
    assert torch.allclose(out.aux_losses["block_sparsity"], expected, atol=1e-4)


def test_cli_lists_every_model_with_its_paper():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name, spec in MODELS.items():
        assert f"\n{name}\n" in f"\n{result.output}"
        assert spec.paper in result.output
    assert "optimizer=adadelta lr=1" in result.output
    blocks = {block.split("\n", 1)[0]: block for block in result.output.strip().split("\n\n")}
    assert "batch_size=128 optimizer=adam" in blocks["softattn"] and "batch_size=256" in blocks["regattn"]
    assert "batch_size=64" in blocks["cham"] and "10,000 iterations at 1e-4 then 1e-5" in blocks["cham"]
    assert "no early stopping" in blocks["cham"]
    code = blocks["softattn_code"]
    assert "lr=0.0002" in code and "15 epochs" in code and "aggregation=released_vote" in code
    assert "preset:    hmdb51: att_layers=3 hidden=1024 last_n=16 optimizer=sgd" in code
    assert "preset:    hollywood2:" in code and "one LSTM layer where the paper describes three" in code
    assert "follows the paper's equations" in blocks["softattn"]
    assert "follows the authors' released code" in blocks["softattn_code"]
    assert "clips:" in blocks["regattn"] and "hidden=1024" in blocks["han"]


def test_convlstm_report_attention_is_queried_by_the_global_average_plus_the_previous_context():
    model = tiny("convlstm_report")
    model.eval()
    X = cubes("convlstm_report")[0]  # (B, T, C, K, K)
    p = dict(model.named_parameters())
    ctx = X.flatten(3).transpose(2, 3)  # (B, T, P, C), written independently of the model's helpers
    z = torch.zeros(B, C)
    expected = []
    for t in range(T):
        q = ctx[:, t].mean(1) + z  # channel-wise global average of X_t plus the previous context
        e = torch.tanh(ctx[:, t] @ p["from_input.weight"].T + p["from_input.bias"]
                       + (q @ p["from_query.weight"].T)[:, None])
        a = torch.softmax((e @ p["score.weight"].T)[..., 0], -1)  # (B, P)
        z = (a[..., None] * ctx[:, t]).sum(1)
        expected.append(a)
    assert torch.allclose(model(X).attention, torch.stack(expected, 1).view(B, T, K, K), atol=1e-6)
    spec = MODELS["convlstm_report"]
    assert (spec.sampling, spec.frames, spec.batch_size, spec.epochs) == ("spread", 30, 15, 10)
    assert "10-class HMDB-51 subset, per-frame accuracy" in spec.paper
