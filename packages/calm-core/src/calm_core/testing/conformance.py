"""Conformance suites that prove a head or codec honours the plugin contract.

A plugin author subclasses one of these in a pytest module (the subclass name must start with
``Test``) and names the registered component::

    from calm_core.testing import HeadConformance

    class TestMyHead(HeadConformance):
        head_name = "acme.mine"
        head_config = {"width": 32}

Every built-in head and codec runs through the same suites.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from calm_core.interfaces import Codec, GenerativeHead, LatentPosterior
from calm_core.model_dir import load_pretrained
from calm_core.registry import IN_PROCESS, codecs, heads

__all__ = ["CodecConformance", "HeadConformance", "perturb_parameters"]


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
        assert heads.identify(cls).name == self.head_name

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
        head.save_pretrained(tmp_path / "head")
        loaded = load_pretrained(tmp_path / "head")
        assert type(loaded) is type(head)
        assert isinstance(loaded, GenerativeHead)
        _assert_state_equal(head, loaded)
        assert loaded.config == head.config
        hidden, _ = self.make_inputs()
        with torch.no_grad():
            a = head.sample(hidden, 2, generator=torch.Generator().manual_seed(3))
            b = loaded.sample(hidden, 2, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)


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
        codec.save_pretrained(tmp_path / "codec")
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
