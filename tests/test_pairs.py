"""Paired input: every caption names its image, so pairing never depends on how files sort."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gapcal.pairs import list_images
from gapcal.pairs import natural_key, read_pairs

COCO = Path(__file__).resolve().parents[1] / "examples" / "coco"


def write_csv(path, rows, header=("image", "caption"), delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_natural_order_puts_2_before_10():
    names = ["10.jpg", "2.jpg", "1.jpg", "img10b.png", "img2b.png", "Img3.png", "0.jpg"]
    assert sorted(names, key=natural_key) == ["0.jpg", "1.jpg", "2.jpg", "10.jpg", "img2b.png", "Img3.png",
                                              "img10b.png"]


def test_list_images_is_natural_order(tmp_path):
    for n in (0, 1, 2, 10, 11, 20):
        shutil.copy(COCO / "images" / "2.jpg", tmp_path / f"{n}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(tmp_path)] == ["0.jpg", "1.jpg", "2.jpg", "10.jpg", "11.jpg", "20.jpg"]


def test_bundled_csv_reads_in_file_order():
    pairs = read_pairs(COCO / "pairs.csv")
    rows = list(csv.DictReader((COCO / "pairs.csv").open(encoding="utf-8")))
    assert len(pairs) == len(rows) == 32
    assert [p.name for p in pairs.images] == [Path(r["image"]).name for r in rows]
    assert list(pairs.captions) == [r["caption"] for r in rows]
    assert pairs.relative(pairs.images[0]) == rows[0]["image"] and pairs.columns == {}


def test_tsv_jsonl_and_extra_columns(tmp_path):
    shutil.copy(COCO / "images" / "2.jpg", tmp_path / "a.jpg")
    shutil.copy(COCO / "images" / "4.jpg", tmp_path / "b.jpg")
    write_csv(tmp_path / "p.tsv", [("a.jpg", "first, with a comma", "x1"), ("b.jpg", "second", "x2")],
              header=("image", "caption", "sku"), delimiter="\t")
    tsv = read_pairs(tmp_path / "p.tsv")
    assert tsv.captions == ("first, with a comma", "second") and tsv.columns == {"sku": ("x1", "x2")}
    lines = [{"image": "b.jpg", "caption": "one", "price": 3.5}, {"image": "a.jpg", "caption": "two", "price": None}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    jsonl = read_pairs(tmp_path / "p.jsonl")
    assert [p.name for p in jsonl.images] == ["b.jpg", "a.jpg"] and jsonl.columns == {"price": (3.5, None)}


def test_folder_of_name_jpg_and_name_txt_pairs_by_name(tmp_path):
    for n in (10, 2):
        shutil.copy(COCO / "images" / "2.jpg", tmp_path / f"{n}.jpg")
    (tmp_path / "2.txt").write_text("caption of two\n\nanother caption of two\n")
    (tmp_path / "10.txt").write_text("caption of ten\n")
    pairs = read_pairs(tmp_path)
    assert [p.name for p in pairs.images] == ["2.jpg", "2.jpg", "10.jpg"]
    assert pairs.captions == ("caption of two", "another caption of two", "caption of ten")


@pytest.mark.parametrize("setup, message", [
    (lambda t: write_csv(t / "p.csv", [("missing.jpg", "a caption")]),
     r"p.csv line 2: image 'missing.jpg' not found \(looked for .*missing.jpg'\)"),
    (lambda t: write_csv(t / "p.csv", [("a.jpg", "")]), r"p.csv line 2: expected a caption, got ''"),
    (lambda t: write_csv(t / "p.csv", [("a.jpg", "x", "extra")]), r"p.csv line 2: expected 2 fields like the header"),
    (lambda t: write_csv(t / "p.csv", [("a.jpg", "x")], header=("file", "caption")),
     r"expected columns 'image' and 'caption', got \['file', 'caption'\]"),
    (lambda t: write_csv(t / "p.csv", [("a.jpg", "x", "1")], header=("image", "caption", "my col")),
     r"an extra column \(it becomes a payload field\) must be an identifier"),
    (lambda t: write_csv(t / "p.csv", [("a.jpg", "x", "1")], header=("image", "caption", "id")),
     r"must be an identifier .* other than \('id', 'vector', 'modality'\), got 'id'"),
    (lambda t: (t / "p.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n{"image": "a.jpg"}\n'),
     r"p.jsonl line 2: expected the keys of the first row"),
    (lambda t: (t / "p.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n[1, 2]\n'),
     r"p.jsonl line 2: expected a JSON object, got list"),
    (lambda t: (t / "p.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n{nope\n'),
     r"p.jsonl line 2: not a JSON object"),
    (lambda t: (t / "p.txt").write_text("a.jpg,x\n"), r"pairs must be a .csv, .tsv or .jsonl file or a folder"),
    (lambda t: t / "absent.csv", r"absent.csv', which does not exist"),
    (lambda t: (t / "p.csv").write_bytes(b"image,caption\n\xff\xfe,x\n"), r"p.csv: expected UTF-8 text"),
])
def test_bad_pairs_name_the_row_and_the_problem(tmp_path, setup, message):
    shutil.copy(COCO / "images" / "2.jpg", tmp_path / "a.jpg")
    source = setup(tmp_path)
    source = source if isinstance(source, Path) else next(p for p in tmp_path.iterdir() if p.name.startswith("p."))
    with pytest.raises(ValueError, match=message):
        read_pairs(source)


@pytest.mark.parametrize("make, message", [
    (lambda t: shutil.copy(t / "a.jpg", t / "a.png"), r"a.png: another image has the same name \(a.jpg\)"),
    (lambda t: (t / "orphan.txt").write_text("x"), r"orphan.txt: no image named orphan.\* beside it"),
    (lambda t: shutil.copy(t / "a.jpg", t / "b.jpg"), r"b.jpg: no caption file b.txt beside it"),
])
def test_bad_folders_are_named(tmp_path, make, message):
    shutil.copy(COCO / "images" / "2.jpg", tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("a caption")
    make(tmp_path)
    with pytest.raises(ValueError, match=message + ".*pass --skip-errors"):
        read_pairs(tmp_path)
    pairs = read_pairs(tmp_path, skip_errors=True)
    assert len(pairs) == 1 and pairs.images[0].name == "a.jpg" and len(pairs.skipped) == 1


def test_skip_errors_keeps_the_other_rows_paired(tmp_path):
    shutil.copy(COCO / "images" / "2.jpg", tmp_path / "a.jpg")
    shutil.copy(COCO / "images" / "4.jpg", tmp_path / "c.jpg")
    write_csv(tmp_path / "p.csv", [("a.jpg", "cap a"), ("gone.jpg", "cap gone"), ("c.jpg", "cap c")])
    pairs = read_pairs(tmp_path / "p.csv", skip_errors=True)
    assert [(p.name, c) for p, c in zip(pairs.images, pairs.captions)] == [("a.jpg", "cap a"), ("c.jpg", "cap c")]
    assert len(pairs.skipped) == 1 and "line 3" in pairs.skipped[0] and "gone.jpg" in pairs.skipped[0]
    write_csv(tmp_path / "none.csv", [("gone.jpg", "cap")])
    with pytest.raises(ValueError, match="holds no usable image-caption pair"):
        read_pairs(tmp_path / "none.csv", skip_errors=True)


captions = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=40).filter(str.strip)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["a.jpg", "sub/b.jpg"]), captions), min_size=1, max_size=12),
       delimiter=st.sampled_from([",", "\t"]))
def test_any_caption_text_round_trips_through_csv(tmp_path, rows, delimiter):
    """Commas, quotes, tabs and any Unicode in captions survive; rows keep their order and their image."""
    (tmp_path / "sub").mkdir(exist_ok=True)
    shutil.copy(COCO / "images" / "2.jpg", tmp_path / "a.jpg")
    shutil.copy(COCO / "images" / "4.jpg", tmp_path / "sub" / "b.jpg")
    source = write_csv(tmp_path / ("p.tsv" if delimiter == "\t" else "p.csv"), rows, delimiter=delimiter)
    pairs = read_pairs(source)
    assert [(pairs.relative(p), c) for p, c in zip(pairs.images, pairs.captions)] == list(rows)


def test_an_unclosed_quote_is_an_error_not_the_rest_of_the_file(tmp_path):
    shutil.copy(COCO / "images" / "2.jpg", tmp_path / "a.jpg")
    (tmp_path / "p.csv").write_text('image,caption\na.jpg,"an unclosed caption\na.jpg,second row\n')
    with pytest.raises(ValueError, match=r"p.csv line 2: not valid CSV \(unexpected end of data\)"):
        read_pairs(tmp_path / "p.csv")
    (tmp_path / "p.tsv").write_text('image\tcaption\na.jpg\t"quoted"tail\n')
    with pytest.raises(ValueError, match=r"p.tsv line 2: not valid TSV"):
        read_pairs(tmp_path / "p.tsv")


def test_unpaired_text_and_image_lists(tmp_path):
    from gapcal.pairs import read_texts

    (tmp_path / "t.txt").write_text("one\n\n  \ntwo\n")
    assert read_texts(tmp_path / "t.txt") == ["one", "two"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\n")
    with pytest.raises(ValueError, match="bad.txt: expected UTF-8 text"):
        read_texts(tmp_path / "bad.txt")
    (tmp_path / "list.txt").write_text(f"{COCO / 'images' / '2.jpg'}\nrel.jpg\n")
    assert list_images(tmp_path / "list.txt") == [COCO / "images" / "2.jpg", tmp_path / "rel.jpg"]
