"""Conformance suites that prove a head or codec honours the plugin contract.

A plugin author subclasses one of these in a pytest module (the subclass name must start with
``Test``) and names the registered component::

    from calm_core.testing import HeadConformance

    class TestMyHead(HeadConformance):
        head_name = "acme.mine"
        head_config = {"width": 32}

Every built-in head and codec runs through the same suites. Beyond shapes and dtypes they check
the behaviour the contract promises: randomness comes from the given generator (the global RNG is
left alone), positions are independent, the loss uses its inputs and trains, configs refuse
unknown fields, what a save keeps is what was trained, and a codec's ``decode_tokens`` is the
argmax of ``decode``. Each test's docstring says what a failure means.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from calm_core.interfaces import Codec, GenerativeHead, LatentPosterior
from calm_core.model_dir import load_pretrained, save_pretrained
from calm_core.registry import IN_PROCESS, codecs, heads

__all__ = ["CodecConformance", "HeadConformance", "perturb_parameters"]

#: a key no config defines: every config must refuse it (DESIGN: pydantic, extra="forbid")
_UNKNOWN_FIELD = "__conformance_unknown_field__"


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _refuses_unknown_fields(config: Any) -> None:
    data = {**config.model_dump(mode="json"), _UNKNOWN_FIELD: 1}
    try:
        type(config).model_validate(data)
    except ValueError:  # pydantic's ValidationError is a ValueError
        return
    raise AssertionError(f"{type(config).__name__} accepted an unknown field; use extra='forbid'")


def perturb_parameters(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Add fixed-seed noise to every parameter, so zero-initialised layers pass gradients."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))


def _assert_state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"state keys differ: {set(sa) ^ set(sb)}"
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, f"{k}: dtype {sa[k].dtype} != {sb[k].dtype}"
        assert torch.equal(sa[k], sb[k]), f"{k} changed in the save/load round trip"


class HeadConformance:
    """The :class:`~calm_core.interfaces.GenerativeHead` contract, as pytest tests."""

    head_name: ClassVar[str]
    head_config: ClassVar[dict[str, Any]] = {}
    hidden_size: ClassVar[int] = 16
    latent_size: ClassVar[int] = 8
    num_positions: ClassVar[int] = 6
    #: set True for heads registered with ``heads.register`` in the test process itself
    allow_in_process: ClassVar[bool] = False
    #: set False only for a head whose loss by design scores the posterior's mean alone (e.g. a
    #: likelihood of ``target.mean``); the default demands that the loss reads ``target.std`` too,
    #: as every head trained on posterior draws does (SPEC.md §5)
    loss_reads_target_spread: ClassVar[bool] = True

    def make_head(self) -> GenerativeHead:
        """Build the head under test by name (fixed seed; parameters perturbed off zero-init)."""
        torch.manual_seed(0)
        head = heads.build(
            {"name": self.head_name, "config": dict(self.head_config)},
            hidden_size=self.hidden_size,
            latent_size=self.latent_size,
        )
        perturb_parameters(head)
        return head

    def make_inputs(
        self, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, LatentPosterior]:
        """Fixed-seed hidden states ``[N, H]`` and a target posterior ``[N, D]``."""
        gen = torch.Generator().manual_seed(1)
        n, h, d = self.num_positions, self.hidden_size, self.latent_size
        hidden = torch.randn(n, h, generator=gen, dtype=dtype)
        mean = torch.randn(n, d, generator=gen, dtype=dtype)
        std = 0.1 + torch.rand(n, d, generator=gen, dtype=dtype)
        return hidden, LatentPosterior(mean, std)

    def test_discoverable_through_entry_point(self) -> None:
        """The name is listed, published by a distribution, and resolves to this class."""
        assert self.head_name in heads.names(), f"'{self.head_name}' is not in {heads.names()}"
        info = heads.info(self.head_name)
        if not self.allow_in_process:
            assert info.distribution != IN_PROCESS, "head is registered in-process, not published"
        cls = heads.get(self.head_name)
        assert issubclass(cls, GenerativeHead)
        head = self.make_head()  # built by name: the registry records it on the instance
        assert type(head) is cls and head.registered_name == self.head_name

    def test_loss_is_per_position_finite_and_differentiable(self) -> None:
        """``loss`` is ``[N]``, finite, in the input dtype, with gradients to inputs and weights."""
        head = self.make_head().train()
        hidden, target = self.make_inputs()
        hidden.requires_grad_(True)
        loss = head.loss(hidden, target)
        assert loss.shape == (self.num_positions,), f"loss shape {tuple(loss.shape)}"
        assert loss.dtype == hidden.dtype
        assert torch.isfinite(loss).all(), f"non-finite loss {loss}"
        loss.mean().backward()
        assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
        assert hidden.grad.abs().sum() > 0, "no gradient reaches the hidden states"
        grads = [p.grad for p in head.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    def test_sample_shape_and_dtype(self) -> None:
        """``sample`` gives ``[num_samples, N, D]`` in the input dtype; independent draws differ."""
        head = self.make_head().eval()
        hidden, _ = self.make_inputs()
        with torch.no_grad():
            one = head.sample(hidden)
            many = head.sample(hidden, num_samples=3)
        assert one.shape == (1, self.num_positions, self.latent_size)
        assert many.shape == (3, self.num_positions, self.latent_size)
        assert many.dtype == hidden.dtype and torch.isfinite(many).all()
        assert not torch.equal(many[0], many[1]), "independent samples are identical"

    def test_sample_reproducible_with_generator(self) -> None:
        """The same generator seed gives the same samples; another seed gives others."""
        head = self.make_head().eval()
        hidden, _ = self.make_inputs()
        with torch.no_grad():
            a = head.sample(hidden, 2, generator=torch.Generator().manual_seed(7))
            b = head.sample(hidden, 2, generator=torch.Generator().manual_seed(7))
            c = head.sample(hidden, 2, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b), "same generator seed gave different samples"
        assert not torch.equal(a, c), "different seeds gave identical samples"

    def test_dtype_follows_inputs(self) -> None:
        """A float64 head on float64 inputs returns float64 losses and samples."""
        head = self.make_head().double().eval()
        hidden, target = self.make_inputs(torch.float64)
        with torch.no_grad():
            assert head.loss(hidden, target).dtype == torch.float64
            assert head.sample(hidden, 2).dtype == torch.float64

    def test_config_round_trip(self) -> None:
        """The config survives JSON and has an object JSON schema."""
        head = self.make_head()
        cls = type(head)
        dumped = json.loads(json.dumps(head.config.model_dump(mode="json")))
        again = cls.config_class.model_validate(dumped)
        assert again == head.config
        schema = cls.config_class.model_json_schema()
        assert schema.get("type") == "object"

    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        """Saving and loading restores the class, weights, config and seeded samples."""
        head = self.make_head().eval()
        save_pretrained(head, tmp_path / "head")
        loaded = load_pretrained(tmp_path / "head")
        assert type(loaded) is type(head)
        assert loaded.registered_name == self.head_name
        assert isinstance(loaded, GenerativeHead)
        _assert_state_equal(head, loaded)
        assert loaded.config == head.config
        hidden, _ = self.make_inputs()
        with torch.no_grad():
            a = head.sample(hidden, 2, generator=torch.Generator().manual_seed(3))
            b = loaded.sample(hidden, 2, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)

    def test_config_refuses_unknown_fields_and_documents_its_own(self) -> None:
        """A misspelt key is an error, not ignored; every field has a ``description``."""
        head = self.make_head()
        _refuses_unknown_fields(head.config)
        schema = type(head).config_class.model_json_schema()
        bare = [k for k, v in schema.get("properties", {}).items() if "description" not in v]
        assert not bare, f"config fields without a description: {bare}"

    def test_sample_draws_from_the_given_generator_only(self) -> None:
        """With a generator the global RNG is untouched and the generator advances; without one
        the global seed decides."""
        head = self.make_head().eval()
        hidden, _ = self.make_inputs()
        gen = _seeded(7)
        state = torch.get_rng_state()
        with torch.no_grad():
            a = head.sample(hidden, 2, generator=gen)
            b = head.sample(hidden, 2, generator=gen)
        assert torch.equal(torch.get_rng_state(), state), "sample(generator=g) used the global RNG"
        assert not torch.equal(a, b), "a second call with the same generator repeated its draw"
        with torch.no_grad():
            torch.manual_seed(5)
            c = head.sample(hidden, 2)
            torch.manual_seed(5)
            d = head.sample(hidden, 2)
            torch.manual_seed(6)
            e = head.sample(hidden, 2)
        assert torch.equal(c, d) and not torch.equal(c, e), (
            "without a generator, follow torch's seed"
        )

    def test_sample_is_per_position_and_stateless(self) -> None:
        """Row i of a seeded sample depends on ``hidden[i]`` only, and not on earlier calls."""
        head = self.make_head().eval()
        hidden, _ = self.make_inputs()
        moved = hidden.clone()
        moved[-1] += 1.0
        twins = hidden.clone()
        twins[1] = twins[0]
        with torch.no_grad():
            a = head.sample(hidden, 2, generator=_seeded(3))
            b = head.sample(moved, 2, generator=_seeded(3))
            again = head.sample(hidden, 2, generator=_seeded(3))
            t = head.sample(twins, 1, generator=_seeded(4))
        assert torch.equal(a, again), "samples depend on earlier calls (stale state)"
        torch.testing.assert_close(a[:, :-1], b[:, :-1], msg="a row's sample depends on other rows")
        assert not torch.allclose(a[:, -1], b[:, -1]), "samples do not depend on the hidden state"
        assert not torch.equal(t[:, 0], t[:, 1]), "positions share one noise draw"

    def test_loss_is_per_position_and_uses_its_inputs(self) -> None:
        """``loss[i]`` changes with ``hidden[i]`` and the target mean of row i, and nothing else."""
        head = self.make_head().eval()
        hidden, target = self.make_inputs()
        moved_h = hidden.clone()
        moved_h[-1] += 1.0
        moved_m = target.mean.clone()
        moved_m[-1] += 1.0

        def loss(h: torch.Tensor, t: LatentPosterior) -> torch.Tensor:
            torch.manual_seed(11)  # the loss may draw noise from the global RNG
            with torch.no_grad():
                return head.loss(h, t)

        base = loss(hidden, target)
        by_h = loss(moved_h, target)
        by_t = loss(hidden, LatentPosterior(moved_m, target.std))
        torch.testing.assert_close(base[:-1], by_h[:-1], msg="loss[i] depends on other rows")
        assert not torch.allclose(base[-1], by_h[-1]), "loss[i] ignores hidden[i]"
        torch.testing.assert_close(base[:-1], by_t[:-1], msg="loss[i] depends on other targets")
        assert not torch.allclose(base[-1], by_t[-1]), "the loss ignores the target"

    def test_loss_reads_the_target_spread(self) -> None:
        """``loss[i]`` changes with the target std of row i (a head that trains on the posterior's
        draws sees its spread); opt out with ``loss_reads_target_spread = False``."""
        head = self.make_head().eval()
        hidden, target = self.make_inputs()
        wider = target.std.clone()
        wider[-1] *= 3.0

        def loss(t: LatentPosterior) -> torch.Tensor:
            torch.manual_seed(11)  # the same noise draws for both targets
            with torch.no_grad():
                return head.loss(hidden, t)

        base, by_s = loss(target), loss(LatentPosterior(target.mean, wider))
        torch.testing.assert_close(base[:-1], by_s[:-1], msg="loss[i] depends on other stds")
        if self.loss_reads_target_spread:
            assert not torch.allclose(base[-1], by_s[-1]), (
                "the loss ignores target.std (only the posterior's mean is scored); train on "
                "target.sample(n), or set loss_reads_target_spread = False if that is by design"
            )
        else:
            torch.testing.assert_close(base[-1], by_s[-1], msg="loss_reads_target_spread is False")

    def test_inputs_are_not_modified_and_shapes_are_checked(self) -> None:
        """``loss`` and ``sample`` leave their inputs alone and refuse ``[B, L, H]`` hidden."""
        head = self.make_head().train()
        hidden, target = self.make_inputs()
        kept = hidden.clone(), target.mean.clone(), target.std.clone()
        head.loss(hidden, target)
        with torch.no_grad():
            head.eval().sample(hidden, 2)
        now = hidden, target.mean, target.std
        assert all(torch.equal(x, y) for x, y in zip(kept, now, strict=True)), "inputs modified"
        try:
            head.sample(hidden.unsqueeze(0))
        except ValueError:
            return
        raise AssertionError("sample accepted hidden [1, N, H]: call self.check_hidden(hidden)")

    def test_low_precision_and_device_follow_inputs(self) -> None:
        """bfloat16 in, bfloat16 out; on the ``meta`` device samples stay there (a CPU-only
        stand-in for "never hard-code a device")."""
        head = self.make_head().to(torch.bfloat16).eval()
        hidden, target = self.make_inputs(torch.bfloat16)
        with torch.no_grad():
            assert head.loss(hidden, target).dtype == torch.bfloat16
            assert head.sample(hidden, 2).dtype == torch.bfloat16
            meta = self.make_head().to("meta").eval()
            assert meta.sample(hidden.float().to("meta"), 2).device.type == "meta"

    def test_training_pulls_samples_to_the_target(self) -> None:
        """80 Adam steps on a fixed, narrow target bring seeded samples clearly closer to it."""
        head = self.make_head().train()
        hidden, target = self.make_inputs()
        target = LatentPosterior(target.mean, torch.full_like(target.std, 0.05))

        def distance() -> float:
            with torch.no_grad():
                s = head.eval().sample(hidden, 32, generator=_seeded(0))
            head.train()
            return float((s - target.mean).pow(2).sum(-1).mean())

        torch.manual_seed(0)
        before = distance()
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(80):
            opt.zero_grad()
            head.loss(hidden, target).mean().backward()
            opt.step()
        after = distance()
        assert after < 0.7 * before, (
            f"samples did not approach the target: {before:.3f} -> {after:.3f}"
        )

    def test_save_load_after_training_keeps_what_was_trained(self, tmp_path: Path) -> None:
        """State changed by training (parameters and buffers) is in ``state_dict``."""
        head = self.make_head().train()
        hidden, target = self.make_inputs()
        opt = torch.optim.SGD(head.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            head.loss(hidden, target).mean().backward()
            opt.step()
        save_pretrained(head.eval(), tmp_path / "trained")
        loaded = load_pretrained(tmp_path / "trained")
        assert isinstance(loaded, GenerativeHead)
        with torch.no_grad():
            a = head.sample(hidden, 2, generator=_seeded(3))
            b = loaded.sample(hidden, 2, generator=_seeded(3))
        assert torch.equal(a, b), "state outside state_dict changed the loaded head's samples"


class CodecConformance:
    """The :class:`~calm_core.interfaces.Codec` contract, as pytest tests."""

    codec_name: ClassVar[str]
    codec_config: ClassVar[dict[str, Any]] = {}
    batch: ClassVar[int] = 3
    chunks: ClassVar[int] = 5
    allow_in_process: ClassVar[bool] = False

    def make_codec(self) -> Codec:
        """Build the codec under test by name (fixed seed; parameters slightly perturbed)."""
        torch.manual_seed(0)
        codec = codecs.build({"name": self.codec_name, "config": dict(self.codec_config)})
        perturb_parameters(codec, scale=0.01)
        return codec

    def make_tokens(self, codec: Codec) -> torch.Tensor:
        """Fixed-seed token ids ``[batch, chunks * K]``."""
        gen = torch.Generator().manual_seed(1)
        n = self.chunks * codec.chunk_size
        return torch.randint(0, codec.vocab_size, (self.batch, n), generator=gen)

    def test_discoverable_through_entry_point(self) -> None:
        """The name is listed, published by a distribution (not in-process), and is a ``Codec``."""
        assert self.codec_name in codecs.names(), f"'{self.codec_name}' not in {codecs.names()}"
        if not self.allow_in_process:
            assert codecs.info(self.codec_name).distribution != IN_PROCESS
        assert issubclass(codecs.get(self.codec_name), Codec)

    def test_sizes(self) -> None:
        """``chunk_size``, ``latent_size`` and ``vocab_size`` are positive integers."""
        codec = self.make_codec()
        for attr in ("chunk_size", "latent_size", "vocab_size"):
            value = getattr(codec, attr)
            assert isinstance(value, int) and value > 0, f"{attr} = {value!r}"

    def test_encode_decode_shapes(self) -> None:
        """``encode``, ``decode``, ``decode_tokens`` and posterior draws have documented shapes."""
        codec = self.make_codec().eval()
        tokens = self.make_tokens(codec)
        k, d, v = codec.chunk_size, codec.latent_size, codec.vocab_size
        with torch.no_grad():
            post = codec.encode(tokens)
            assert isinstance(post, LatentPosterior)
            assert post.mean.shape == (self.batch, self.chunks, d)
            assert post.std.shape == (self.batch, self.chunks, d) and (post.std > 0).all()
            logits = codec.decode(post.mean)
            assert logits.shape == (self.batch, self.chunks, k, v)
            ids = codec.decode_tokens(post.mean)
            assert ids.shape == (self.batch, self.chunks, k) and ids.dtype == torch.long
            flat = codec.decode(post.mean.reshape(-1, d))
            assert flat.shape == (self.batch * self.chunks, k, v)
            draws = post.sample(4)
            assert draws.shape == (4, self.batch, self.chunks, d)

    def test_decode_states_agree_with_decode_tokens(self) -> None:
        """``tokens_from_states(decode_states(z)[..., k, :])`` is ``decode_tokens(z)[..., k]``."""
        codec = self.make_codec().eval()
        torch.manual_seed(0)
        latents = torch.randn(5, 3, codec.latent_size)
        with torch.no_grad():
            ids = codec.decode_tokens(latents)
            states = codec.decode_states(latents)
            assert states.shape[:3] == (5, 3, codec.chunk_size), tuple(states.shape)
            for k in range(codec.chunk_size):
                at_k = codec.tokens_from_states(states[:, :, k].reshape(15, *states.shape[3:]))
                assert torch.equal(at_k.reshape(5, 3), ids[..., k]), f"position {k} differs"

    def test_rejects_tokens_not_a_multiple_of_k(self) -> None:
        """A token length that is not a multiple of K is a ``ValueError`` naming K."""
        codec = self.make_codec()
        if codec.chunk_size == 1:
            return
        tokens = self.make_tokens(codec)[:, :-1]
        try:
            codec.encode(tokens)
        except ValueError as exc:
            assert str(codec.chunk_size) in str(exc)
        else:
            raise AssertionError("encode accepted a length that is not a multiple of K")

    def test_loss_is_finite_and_trains(self) -> None:
        """``loss`` returns a finite scalar whose gradients reach the parameters."""
        codec = self.make_codec().train()
        tokens = self.make_tokens(codec)
        out = codec.loss(tokens)
        assert "loss" in out and out["loss"].dim() == 0 and torch.isfinite(out["loss"])
        out["loss"].backward()
        grads = [p.grad for p in codec.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
        assert all(g is None or torch.isfinite(g).all() for g in grads)

    def test_config_round_trip(self) -> None:
        """The config survives JSON."""
        codec = self.make_codec()
        dumped = json.loads(json.dumps(codec.config.model_dump(mode="json")))
        assert type(codec).config_class.model_validate(dumped) == codec.config

    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        """``save_pretrained`` then ``load_pretrained`` restores the class, weights and outputs."""
        codec = self.make_codec().eval()
        save_pretrained(codec, tmp_path / "codec")
        loaded = load_pretrained(tmp_path / "codec")
        assert type(loaded) is type(codec) and isinstance(loaded, Codec)
        _assert_state_equal(codec, loaded)
        tokens = self.make_tokens(codec)
        with torch.no_grad():
            assert torch.equal(codec.encode(tokens).mean, loaded.encode(tokens).mean)
            assert torch.equal(
                codec.decode_tokens(codec.encode(tokens).mean),
                loaded.decode_tokens(loaded.encode(tokens).mean),
            )

    def test_config_refuses_unknown_fields(self) -> None:
        """A misspelt key is an error, not ignored."""
        _refuses_unknown_fields(self.make_codec().config)

    def test_decode_tokens_is_the_argmax_of_decode(self) -> None:
        """``decode_tokens(z)`` equals ``decode(z).argmax(-1)``."""
        codec = self.make_codec().eval()
        z = torch.randn(5, 3, codec.latent_size, generator=_seeded(0))
        with torch.no_grad():
            assert torch.equal(codec.decode_tokens(z), codec.decode(z).argmax(-1))

    def test_decode_takes_any_leading_dims_and_uses_the_latents(self) -> None:
        """``decode`` of ``[2, 3, 4, D]`` is the stack of its slices, and other latents give
        other logits."""
        codec = self.make_codec().eval()
        z = torch.randn(2, 3, 4, codec.latent_size, generator=_seeded(0))
        with torch.no_grad():
            full = codec.decode(z)
            first, second = codec.decode(z[0]), codec.decode(z[1])
        assert full.shape == (2, 3, 4, codec.chunk_size, codec.vocab_size), tuple(full.shape)
        torch.testing.assert_close(full[1], second)
        assert not torch.allclose(first, second), "decode ignores its latents (or is stale)"

    def test_encode_is_deterministic_per_chunk_and_per_sequence(self) -> None:
        """In eval mode a chunk's code depends on its K tokens only, never on the batch."""
        codec = self.make_codec().eval()
        tokens = self.make_tokens(codec)
        k = codec.chunk_size
        changed = tokens.clone()
        changed[0, k : 2 * k] = (changed[0, k : 2 * k] + 1) % codec.vocab_size  # chunk 1, row 0
        with torch.no_grad():
            a, again = codec.encode(tokens), codec.encode(tokens)
            b = codec.encode(changed)
            alone = codec.encode(tokens[1:2])
        assert torch.equal(a.mean, again.mean) and torch.equal(a.std, again.std), "random in eval"
        torch.testing.assert_close(alone.mean, a.mean[1:2], msg="a code depends on the batch")
        others = torch.ones(a.mean.shape[:2], dtype=torch.bool)
        others[0, 1] = False
        torch.testing.assert_close(a.mean[others], b.mean[others], msg="other chunks' codes moved")
        assert not torch.allclose(a.mean[0, 1], b.mean[0, 1]), "a chunk's code ignores its tokens"

    def test_loss_reaches_every_parameter(self) -> None:
        """Every trainable parameter gets a gradient from ``loss``."""
        codec = self.make_codec().train()
        codec.loss(self.make_tokens(codec))["loss"].backward()
        dead = [
            n
            for n, p in codec.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
        ]
        assert not dead, f"no gradient reaches {dead}"

    def test_dtype_follows_the_module(self) -> None:
        """A float64 or bfloat16 codec encodes and decodes in its own dtype."""
        for dtype in (torch.float64, torch.bfloat16):
            codec = self.make_codec().to(dtype).eval()
            tokens = self.make_tokens(codec)
            with torch.no_grad():
                post = codec.encode(tokens)
                assert post.mean.dtype == dtype and post.std.dtype == dtype, dtype
                assert codec.decode(post.mean).dtype == dtype, dtype

    def test_device_follows_the_module(self) -> None:
        """On CUDA (where available) training, encoding and decoding stay on the device."""
        if not torch.cuda.is_available():
            import pytest

            pytest.skip("needs a CUDA device")
        device = torch.device("cuda")  # the device under test; the codec must follow it
        codec = self.make_codec().to(device).train()
        tokens = self.make_tokens(codec).to(device)
        assert codec.loss(tokens)["loss"].device == device
        with torch.no_grad():
            post = codec.eval().encode(tokens)
            assert post.mean.device == device and codec.decode(post.mean).device == device
            assert codec.decode_tokens(post.mean).device == device

    def test_learns_to_reconstruct(self) -> None:
        """150 Adam steps on one small batch: ``decode_tokens(encode(x).mean)`` recovers x."""
        codec = self.make_codec().train()
        tokens = self.make_tokens(codec)[:2, : 2 * codec.chunk_size]
        opt = torch.optim.Adam([p for p in codec.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(0)
        for _ in range(150):
            opt.zero_grad()
            codec.loss(tokens)["loss"].backward()
            opt.step()
        with torch.no_grad():
            ids = codec.eval().decode_tokens(codec.encode(tokens).mean).reshape(tokens.shape)
        accuracy = (ids == tokens).float().mean().item()
        assert accuracy > max(0.5, 10 / codec.vocab_size), f"reconstruction {accuracy:.2f}"

    def test_save_load_after_training_keeps_what_was_trained(self, tmp_path: Path) -> None:
        """State changed by training is in ``state_dict``."""
        codec = self.make_codec().train()
        tokens = self.make_tokens(codec)
        opt = torch.optim.SGD([p for p in codec.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            codec.loss(tokens)["loss"].backward()
            opt.step()
        save_pretrained(codec.eval(), tmp_path / "trained")
        loaded = load_pretrained(tmp_path / "trained")
        assert isinstance(loaded, Codec)
        with torch.no_grad():
            assert torch.equal(codec.encode(tokens).mean, loaded.encode(tokens).mean)
