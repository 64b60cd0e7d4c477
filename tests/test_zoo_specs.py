"""Task registry and architecture specs."""

import pytest
import torch

from igpg_hf.zoo import (
    HELD_OUT_TASKS,
    ArchSpec,
    architecture_for_task,
    get_architecture,
    get_task,
    list_tasks,
    load_task_data,
    sample_support_set,
)


def test_registry_has_several_dozen_tasks_and_a_held_out_set():
    assert len(list_tasks()) >= 36
    assert set(list_tasks(held_out=True)) == set(HELD_OUT_TASKS)
    assert not set(HELD_OUT_TASKS) & set(list_tasks(held_out=False))


def test_paper_parameter_counts():
    assert get_architecture("tiny_cnn").num_parameters() == 2464
    assert get_architecture("tiny_cnn_rgb").num_parameters() == 10853
    assert get_architecture("resnet20").num_parameters() == 272474  # ResNet-20: 0.27 M


def test_spec_json_and_text_are_stable():
    spec = get_architecture("resnet_small", blocks=[2, 3, 2])
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert "layers [2, 3, 2]" in spec.text()
    assert get_architecture("tiny_cnn").text().startswith("cnn: conv channels [8, 6, 4], kernels [5, 5, 2]")


@pytest.mark.parametrize("task", ["mnist_rot45", "digits_evenodd", "mnist1d_permute2", "iris", "mnist_3v8"])
def test_tasks_load_and_fit_their_default_architecture(task):
    data = load_task_data(task)
    spec = architecture_for_task(task)
    assert data.x_train.shape[1:] == get_task(task).input_shape
    assert int(data.y_train.max()) + 1 == get_task(task).num_classes
    assert spec.build()(data.x_test[:4]).shape == (4, get_task(task).num_classes)


def test_derived_tasks_change_inputs_or_labels():
    base, rot, perm = load_task_data("mnist"), load_task_data("mnist_rot90"), load_task_data("mnist_permute1")
    assert torch.equal(rot.x_train, torch.rot90(base.x_train, 1, (-2, -1)))
    assert torch.equal(perm.x_train, base.x_train) and not torch.equal(perm.y_train, base.y_train)
    x, y = sample_support_set("mnist", per_class=5)
    assert x.shape == (50, 1, 28, 28) and torch.equal(torch.bincount(y), torch.full((10,), 5))


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        get_architecture("resnet9000")
    with pytest.raises(ValueError, match="unknown architecture family"):
        ArchSpec("transformer", {})
    with pytest.raises(ValueError, match="unknown field"):
        get_architecture("tiny_cnn", depth=3)
    with pytest.raises(ValueError, match="needs image input"):
        architecture_for_task("iris", "tiny_cnn")
