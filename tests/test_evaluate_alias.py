"""keras_normreg.evaluate is a deprecated alias of keras_normreg.saving: every name it used to
export is saving's own object, reached with a DeprecationWarning naming the import to use."""

import importlib
import warnings

import pytest

from keras_normreg import saving

# what ``keras_normreg.evaluate`` exported before it became an alias (written out here, not
# read from the module, so that dropping a name fails this test)
OLD_NAMES = ("LOSS_TOLERANCE", "REQUIRED_CARD_KEYS", "CardError", "ChecksumError",
             "MetricMismatchError", "evaluate_model", "evaluate_saved", "find_entry",
             "list_saved", "load_card", "load_saved", "saved_models_dirs")


@pytest.mark.parametrize("name", OLD_NAMES)
def test_old_import_works_warns_and_is_saving_s_object(name):
    with pytest.warns(DeprecationWarning,
                      match=rf"`from keras_normreg\.saving import {name}`") as record:
        module = importlib.import_module("keras_normreg.evaluate")
        value = getattr(module, name)
    assert value is getattr(saving, name)
    # the warning points at the line that used the old name (this file), not at the alias
    assert all(w.filename == __file__ for w in record
               if issubclass(w.category, DeprecationWarning))


def test_from_import_warns():
    with pytest.warns(DeprecationWarning, match="keras_normreg.evaluate is deprecated"):
        from keras_normreg.evaluate import evaluate_saved
    assert evaluate_saved is saving.evaluate_saved


def test_the_alias_exports_exactly_the_old_names():
    from keras_normreg import evaluate

    assert sorted(evaluate.__all__) == sorted(OLD_NAMES)
    assert dir(evaluate) == sorted(OLD_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name it never exported: no warning, an error
        with pytest.raises(AttributeError, match="has no attribute 'save_entry'"):
            evaluate.save_entry  # noqa: B018
