"""The Amazon Shopping Queries (ESCI) loader on small tables written in the public column layout."""

import csv
import json
import sys
from pathlib import Path

import pytest

from aisle.cli import main
from aisle.data.esci import ESCI_ITEM_IDS, EsciOptions, convert_esci, load_esci
from aisle.data.format import load_dataset
from aisle.errors import DataError

EXAMPLE_HEADER = (
    "example_id",
    "query",
    "query_id",
    "product_id",
    "product_locale",
    "esci_label",
    "small_version",
    "large_version",
    "split",
)
PRODUCT_HEADER = (
    "product_id",
    "product_title",
    "product_description",
    "product_bullet_point",
    "product_brand",
    "product_color",
    "product_locale",
)
EXAMPLES = [
    (0, "running shoes men", 7, "B01", "us", "E", 1, 1, "train"),
    (1, "running shoes men", 7, "B02", "us", "S", 1, 1, "train"),
    (2, "running shoes men", 7, "B03", "us", "C", 1, 1, "train"),
    (3, "running shoes men", 7, "B04", "us", "I", 1, 1, "train"),
    (4, "wireless earbuds", 3, "B05", "us", "E", 1, 1, "test"),
    (5, "wireless earbuds", 3, "B06", "us", "E", 1, 1, "test"),
    (6, "wireless earbuds", 3, "B02", "us", "I", 1, 1, "test"),
    (7, "zapatillas", 9, "B07", "es", "E", 1, 1, "train"),
    (8, "wireless earbuds", 3, "B99", "us", "S", 1, 1, "test"),  # not in the products table
]
PRODUCTS = [
    ("B01", "Nike Pegasus 40 Men's Running Shoes", "", "", "Nike", "Black", "us"),
    ("B02", "Brooks Ghost 15 Women's Running Shoes", "", "", "Brooks", "", "us"),
    ("B03", "Balega Running Socks 3-Pack", "", "", "Balega", "White", "us"),
    ("B04", "Hydro Flask 32oz Water Bottle", "", "", "Hydro Flask", "", "us"),
    ("B05", "Sony WF-1000XM5 Earbuds", "", "", "Sony", "Silver", "us"),
    ("B06", "Jabra Elite 4 Earbuds", "", "", "Jabra", "", "us"),
    ("B07", "Zapatillas Adidas", "", "", "Adidas", "", "es"),
]


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def tables(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_csv(tmp_path / "examples.csv", EXAMPLE_HEADER, EXAMPLES),
        write_csv(tmp_path / "products.csv", PRODUCT_HEADER, PRODUCTS),
    )


def test_esci_tables_convert_to_the_dataset_format(tables: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    converted = convert_esci(*tables, out)
    assert converted.dropped_examples == 1  # B99 has no product row
    data = load_dataset(out)
    ids = [json.loads(line) for line in (out / ESCI_ITEM_IDS).read_text().splitlines()]
    product_of = {row["item_id"]: row["product_id"] for row in ids}
    assert sorted(product_of.values()) == ["B01", "B02", "B03", "B04", "B05", "B06"]  # Spanish row filtered
    assert {item.title for item in data.items} == {row[1] for row in PRODUCTS if row[6] == "us"}
    assert data.item(next(i for i, p in product_of.items() if p == "B01")).attributes == {"color": "Black"}
    assert [(q.query_id, q.text) for q in data.queries] == [(3, "wireless earbuds"), (7, "running shoes men")]
    labels = {(j.query_id, product_of[j.item_id]): j.label for j in data.judgments}
    assert labels == {(e[2], e[3]): e[5] for e in EXAMPLES if e[4] == "us" and e[3] != "B99"}
    by_query = {s.query_id: s for s in data.sessions}
    assert by_query[3].split == "test" and by_query[7].split in ("train", "valid")
    clicked = {product_of[i.item_id] for s in data.sessions for i in s.impressions if i.clicked}
    assert clicked == {"B01", "B05", "B06"}


def test_long_label_names_and_query_limit(tmp_path: Path) -> None:
    rows = [
        (i, q, qid, pid, "us", label, 1, 1, "train")
        for i, (q, qid, pid, label) in enumerate(
            [("shoes", 1, "B01", "exact"), ("earbuds", 2, "B05", "Substitute"), ("socks", 3, "B03", "irrelevant")]
        )
    ]
    examples = write_csv(tmp_path / "examples.csv", EXAMPLE_HEADER, rows)
    products = write_csv(tmp_path / "products.csv", PRODUCT_HEADER, PRODUCTS)
    data = load_esci(examples, products, EsciOptions(max_queries=2)).dataset
    assert [q.query_id for q in data.queries] == [1, 2]
    assert sorted(j.label for j in data.judgments) == ["E", "S"]


def test_missing_file_is_named(tables: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv: file not found"):
        load_esci(tables[0], tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("which", "column"), [(0, "esci_label"), (0, "query_id"), (1, "product_title"), (1, "product_brand")]
)
def test_missing_column_names_file_and_column(tmp_path: Path, which: int, column: str) -> None:
    header, rows = (EXAMPLE_HEADER, EXAMPLES) if which == 0 else (PRODUCT_HEADER, PRODUCTS)
    keep = [i for i, name in enumerate(header) if name != column]
    broken = write_csv(
        tmp_path / "broken.csv", tuple(header[i] for i in keep), [tuple(r[i] for i in keep) for r in rows]
    )
    good = write_csv(tmp_path / "good.csv", *((PRODUCT_HEADER, PRODUCTS) if which == 0 else (EXAMPLE_HEADER, EXAMPLES)))
    paths = (broken, good) if which == 0 else (good, broken)
    with pytest.raises(DataError, match=rf"broken.csv: missing column '{column}'"):
        load_esci(*paths)


def test_unknown_label_names_file_line_and_value(tmp_path: Path) -> None:
    rows = [*EXAMPLES[:2], (2, "running shoes men", 7, "B03", "us", "X", 1, 1, "train")]
    examples = write_csv(tmp_path / "examples.csv", EXAMPLE_HEADER, rows)
    products = write_csv(tmp_path / "products.csv", PRODUCT_HEADER, PRODUCTS)
    with pytest.raises(DataError, match=r"examples.csv:4: esci_label='X'"):
        load_esci(examples, products)


def test_no_matching_product_is_an_empty_catalog(tmp_path: Path) -> None:
    examples = write_csv(tmp_path / "examples.csv", EXAMPLE_HEADER, EXAMPLES)
    products = write_csv(tmp_path / "products.csv", PRODUCT_HEADER, [("Z1", "Unrelated", "", "", "Acme", "", "us")])
    with pytest.raises(DataError, match="products.csv: the catalog is empty"):
        load_esci(examples, products)


def test_locale_without_examples_is_refused(tables: tuple[Path, Path]) -> None:
    with pytest.raises(DataError, match="examples.csv: no examples left"):
        load_esci(*tables, EsciOptions(locale="jp"))


def test_ragged_csv_row_is_named(tmp_path: Path) -> None:
    examples = tmp_path / "examples.csv"
    examples.write_text(",".join(EXAMPLE_HEADER) + "\n0,shoes,1,B01\n")
    with pytest.raises(DataError, match="examples.csv:2: 4 fields"):
        load_esci(examples, write_csv(tmp_path / "products.csv", PRODUCT_HEADER, PRODUCTS))


def test_non_utf8_csv_is_named(tmp_path: Path) -> None:
    examples = tmp_path / "examples.csv"
    examples.write_bytes(",".join(EXAMPLE_HEADER).encode() + b"\n0,caf\xe9,1,B01,us,E,1,1,train\n")
    with pytest.raises(DataError, match="examples.csv:.*not readable as UTF-8 CSV"):
        load_esci(examples, write_csv(tmp_path / "products.csv", PRODUCT_HEADER, PRODUCTS))


def test_unsupported_file_type_is_refused(tables: tuple[Path, Path], tmp_path: Path) -> None:
    odd = tmp_path / "examples.xlsx"
    odd.write_text("")
    with pytest.raises(DataError, match="examples.xlsx: unsupported file type '.xlsx'"):
        load_esci(odd, tables[1])


def test_parquet_without_pyarrow_says_what_to_install(
    tables: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import pyarrow.parquet` raise ImportError, as on a machine
    # without pyarrow (the dev install has it, for test_parquet_tables_convert).
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    parquet = tmp_path / "examples.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="examples.parquet: reading parquet needs pyarrow"):
        load_esci(parquet, tables[1])


def test_parquet_tables_convert(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def write(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
        pq.write_table(pa.table({name: [row[i] for row in rows] for i, name in enumerate(header)}), path)
        return path

    examples = write(tmp_path / "examples.parquet", EXAMPLE_HEADER, EXAMPLES)
    products = write(tmp_path / "products.parquet", PRODUCT_HEADER, PRODUCTS)
    data = load_esci(examples, products).dataset
    assert len(data.items) == 6 and len(data.judgments) == 7


def test_cli_converts_and_reports_bad_input_without_traceback(
    tables: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["data", "--esci-examples", str(tables[0]), "--esci-products", str(tables[1]), "--out", str(out)]) == 0
    assert (out / ESCI_ITEM_IDS).is_file()
    missing = tmp_path / "missing.parquet"
    assert main(["data", "--esci-examples", str(missing), "--esci-products", str(tables[1]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: file not found" in err and "Traceback" not in err
    assert main(["data", "--esci-examples", str(tables[0]), "--out", str(out)]) == 2
    assert "--esci-products" in capsys.readouterr().err
    both = ["--esci-examples", str(tables[0]), "--esci-products", str(tables[1])]
    assert main(["data", *both, "--out", str(out), "--preset", "tiny"]) == 2
    assert "--preset and --seed" in capsys.readouterr().err
