"""This file is listed nowhere and carries no marker: being in a block folder is what makes
`make test` run it again in the JAX and PyTorch sessions (tests/backend_marks.py)."""


def test_a_file_in_a_block_folder_is_selected_for_every_backend(request):
    assert request.node.get_closest_marker("backends") is not None
    assert request.node.get_closest_marker("tf_only") is None
