"""End to end on the demo: digits CNN, bit-exact on the whole test split, int8 within 1 pt of float."""
from codegen import demo


def test_demo_digits_bit_exact_and_accurate(tmp_path):
    r = demo.run(out_dir=tmp_path / "demo")
    assert r.samples == 360 and r.bit_exact_samples == 360
    assert r.float_accuracy >= 0.95
    assert r.int8_accuracy_reference == r.int8_accuracy_c
    assert r.int8_accuracy_c >= r.float_accuracy - 0.01
    assert r.arena_bytes < 3872 and r.flash_bytes < 8552  # TFLite Micro: 3,872 B arena, 8,552 B flatbuffer
    assert (tmp_path / "demo" / "digits_model.h").is_file()
