"""Fixtures for the kernel tests: the Triton interpreter on CPU, fresh random tensor lists.

The kernels are Triton programs; without a GPU they run only under TRITON_INTERPRET=1
(without it a launch fails with "0 active drivers"), which must be set before triton is imported (torchvision imports
it), so it is set when this file is imported; TRITON_INTERPRET=0 in the environment turns the
CPU kernel tests into skips and lets the `gpu` tests run the compiled kernels.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402  (after the environment is set, on purpose)

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.dispatch import kernel_backend  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture
def use_triton(monkeypatch):
    """Forces the Triton path (the interpreter on CPU) and checks that it is really taken."""
    if os.environ["TRITON_INTERPRET"] != "1":
        pytest.skip("TRITON_INTERPRET is not 1: the CPU kernel tests need the Triton interpreter")
    monkeypatch.setenv("MEDFT_KERNELS", "triton")
    if kernel_backend(torch.device("cpu")) != "triton":
        pytest.fail("the Triton interpreter is off: triton was imported before this conftest set "
                    "TRITON_INTERPRET=1; set it in the environment")


@pytest.fixture
def seed():
    """A fresh seed each run, printed (pytest shows it with a failure) so a failure can be replayed."""
    value = random.SystemRandom().randrange(2**31)
    print(f"seed={value}")
    torch.manual_seed(value)
    return value


def _random_shape(gen: random.Random) -> tuple[tuple[int, ...], bool]:
    """A shape like a CNN's tensors, and whether to lay it out channels-last."""
    kind = gen.choice(["bias", "conv7", "conv3", "linear", "vector", "multi_chunk"])
    if kind == "bias":
        return (gen.choice([1, 3, 64, 1000]),), False
    if kind == "conv7":
        return (gen.randint(1, 64), 3, 7, 7), gen.random() < 0.5
    if kind == "conv3":
        return (gen.randint(1, 24), gen.randint(1, 24), 3, 3), gen.random() < 0.5
    if kind == "linear":
        return (gen.randint(1, 97), gen.randint(1, 131)), False
    if kind == "vector":
        return (gen.randint(2, 5000),), False
    return (gen.randint(65_537, 140_000),), False  # crosses the kernels' 65,536-element chunk


def _make(shape: tuple[int, ...], channels_last: bool, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    t = torch.randn(shape) * scale
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    return t.to(dtype)


@pytest.fixture
def make_tensor_lists(seed):
    """Returns make(num_lists) -> num_lists lists of n random tensors, tensor i of one shape in all.

    n is 6 to 14; shapes include 1-element biases, 7x7 convs, odd sizes, channels-last 4-D tensors
    and tensors longer than one kernel chunk; each tensor of each list draws its own dtype.
    List 0 has one all-zero tensor.
    """
    gen = random.Random(seed)

    def make(num_lists: int) -> list[list[torch.Tensor]]:
        layouts = [_random_shape(gen) for _ in range(gen.randint(6, 14))]
        lists = [[_make(shape, cl, gen.choice(DTYPES), scale=gen.choice([1e-3, 1.0, 30.0]))
                  for shape, cl in layouts] for _ in range(num_lists)]
        lists[0][gen.randrange(len(layouts))].zero_()
        return lists

    return make


@pytest.fixture
def tiny_conv_net_tensors(seed):
    """(grads, params) of a small channels-last conv net with BatchNorm after one backward pass."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.BatchNorm2d(12), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(12, 5),
    ).to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 20, 20).to(memory_format=torch.channels_last)
    torch.nn.functional.cross_entropy(net(images), torch.tensor([0, 1, 2, 3])).backward()
    params = list(net.parameters())
    return [p.grad for p in params], [p.detach() for p in params]
