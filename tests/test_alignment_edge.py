"""ProjectEncoder against the plain-autograd reference on unusual inputs."""
import pytest
import torch

from dictionary_learning_aligned.alignment import project_encoder, project_encoder_reference


def _grads(f, V, W, G, create_graph=False):
    ins = [t for t in (V, W) if t.requires_grad]
    return torch.autograd.grad(f(V, W), ins, G, create_graph=create_graph)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_matches_reference_on_layouts_and_partial_grads(layout, needs):
    g = torch.Generator().manual_seed(0)
    d, a = 9, 5
    if layout == "contiguous":
        V, W = torch.randn(d, a, generator=g), torch.randn(a, d, generator=g)
    elif layout == "transposed":
        V, W = torch.randn(a, d, generator=g).T, torch.randn(d, a, generator=g).T
    else:
        V, W = torch.randn(d, 2 * a, generator=g)[:, ::2], torch.randn(2 * a, d, generator=g)[1::2]
    V, W = V.double().requires_grad_(needs[0]), W.double().requires_grad_(needs[1])
    G = torch.randn(d, a, generator=g, dtype=torch.float64)
    torch.testing.assert_close(project_encoder(V, W), project_encoder_reference(V, W))
    for x, y in zip(_grads(project_encoder, V, W, G), _grads(project_encoder_reference, V, W, G)):
        torch.testing.assert_close(x, y)


def test_double_backward_matches_reference():
    g = torch.Generator().manual_seed(1)
    V = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(project_encoder, (V, W))
    out = []
    for f in (project_encoder, project_encoder_reference):  # a gradient penalty: other paths to V exist too
        (gV,) = torch.autograd.grad((f(V, W) ** 2).sum(), V, create_graph=True)
        out.append(torch.autograd.grad((gV ** 2).sum() + (V ** 2).sum(), (V, W)))
    for x, y in zip(*out):
        torch.testing.assert_close(x, y)


def test_in_place_decoder_edit_before_backward_is_caught():
    # a decoder normalised in place between forward and backward would make the saved gradient inputs stale
    V = torch.randn(6, 4, requires_grad=True)
    W = torch.randn(4, 6, requires_grad=True)
    E = project_encoder(V, W)
    with torch.no_grad():
        W.div_(W.norm(dim=0, keepdim=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        E.sum().backward()


def test_mode_names_are_read_in_any_letter_case():
    from dictionary_learning_aligned.alignment import check_mode
    from dictionary_learning_aligned.experiments import parse_alignment

    assert check_mode("PROJECT") == "project" and check_mode("Standard") is None
    assert parse_alignment("PENALTY:1") == ("penalty", 1.0) and parse_alignment(" Tied ") == ("tied", None)
    with pytest.raises(ValueError, match="unknown alignment mode 'PROJECTED'"):
        check_mode("PROJECTED")
