"""The audit spec: valid specs parse, every forbidden construct is refused with a clear message."""

from __future__ import annotations

import base64
import json
import tomllib
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.demo_assets import demo_spec_toml
from benchmarks.spec import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MIN_DOCUMENTS,
    DTYPES,
    FILTERS,
    MAX_KEY_PARTS,
    MAX_NESTING,
    MAX_SPEC_BYTES,
    METRICS,
    EngineSpec,
    SpecError,
    lm_eval_cli_args,
    parse_spec,
    spec_to_lm_eval_yaml,
)
from verifier.errors import UnusableInput

BASE = """
name = "t-audit"
version = 1
seed = 7
output = "aggregate"

[[task]]
name = "mc"
dataset = "data/mc.jsonl"
split = "test"

[task.config]
output_type = "multiple_choice"
doc_to_text = "{{question}}\\nAnswer:"
doc_to_choice = "{{choices}}"
doc_to_target = "answer"
metric_list = [{ metric = "acc", aggregation = "mean", higher_is_better = true }]
"""


def with_config(extra: str, base: str = BASE) -> bytes:
    """`base` with extra lines appended to its (last) [task.config]."""
    return (base + extra + "\n").encode()


def refused(data: bytes, *fragments: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    message = str(info.value)
    for f in fragments:
        assert f in message, message
    return message


def test_valid_spec_parses():
    spec = parse_spec(BASE.encode())
    assert (spec.name, spec.version, spec.seed, spec.output, spec.batch_size) == ("t-audit", 1, 7, "aggregate", 1)
    (task,) = spec.tasks
    assert (task.name, task.dataset, task.split) == ("mc", "data/mc.jsonl", "test")
    assert task.config["metric_list"] == [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    assert spec.datasets == ["data/mc.jsonl"]


@pytest.mark.parametrize("output, recipient, message", [
    ("aggregate+samples", None, "needs samples_recipient"),
    ("aggregate+samples", "c2hvcnQ=", "32 bytes"),
    ("aggregate+samples", "not base64!", "32 bytes"),
    ("aggregate", base64.b64encode(bytes(32)).decode(), "only applies to"),
])
def test_samples_recipient_rules(output, recipient, message):
    text = BASE.replace('output = "aggregate"', f'output = "{output}"'
                        + (f'\nsamples_recipient = "{recipient}"' if recipient else ""))
    with pytest.raises(SpecError, match=message):
        parse_spec(text.encode())


def test_demo_spec_parses_and_fills_metric_defaults():
    spec = parse_spec(demo_spec_toml().encode())
    assert spec.task_names == ["aa_demo_mc", "aa_demo_gen"]
    assert spec.output == "aggregate" and spec.samples_recipient is None
    key = base64.b64encode(bytes(range(32))).decode()
    with_samples = parse_spec(demo_spec_toml(samples_recipient=key).encode())
    assert (with_samples.output, with_samples.samples_recipient) == ("aggregate+samples", key)
    gen = spec.tasks[1].config
    assert gen["generation_kwargs"] == {"until": ["\n", "Question:"], "max_gen_toks": 16, "do_sample": False}
    spec2 = parse_spec(BASE.replace(', aggregation = "mean", higher_is_better = true', "").encode())
    assert spec2.tasks[0].config["metric_list"][0] == {"metric": "acc", "aggregation": "mean", "higher_is_better": True}


def test_spec_error_is_unusable_input():
    assert issubclass(SpecError, UnusableInput)


@pytest.mark.parametrize("data, fragment", [
    (b"name = \"x\"\nversion = ", "malformed TOML"),
    (b"\xff\xfe", "not UTF-8"),
    (b"name = \"x\"\n", "`version` is required"),
    (BASE.replace('output = "aggregate"', 'output = "everything"').encode(), "output 'everything'"),
    (BASE.replace("seed = 7", "seed = -1").encode(), "`seed` must be an integer"),
    (BASE.replace("seed = 7", "seed = true").encode(), "`seed` must be an integer"),
    (BASE.replace("version = 1", "version = 1\nlimit = 3").encode(), "unknown key(s) limit"),
    (BASE.split("[[task]]")[0].encode(), "at least one [[task]]"),
    (BASE.replace('name = "mc"', 'name = "../etc"').encode(), "name '../etc'"),
    (BASE.replace('"data/mc.jsonl"', '"../secret.jsonl"').encode(), "no '..'"),
    (BASE.replace('"data/mc.jsonl"', '"/abs/mc.jsonl"').encode(), "relative path"),
    (BASE.replace('"data/mc.jsonl"', '"mc.csv"').encode(), ".jsonl"),
    (BASE.replace('split = "test"', 'split = "te st"').encode(), "split 'te st'"),
])
def test_malformed_specs(data, fragment):
    refused(data, fragment)


def test_duplicate_task_names():
    twice = BASE + BASE[BASE.index("[[task]]"):]
    refused(twice.encode(), "task 'mc'", "used twice")


@pytest.mark.parametrize("key, value", [
    ("custom_dataset", '"utils.load"'),
    ("dataset_path", '"json"'),
    ("dataset_kwargs", '{ data_files = "x.jsonl" }'),
    ("data_files", '"x.jsonl"'),
    ("class", '"my.Task"'),
    ("include", '"other.yaml"'),
    ("use_prompt", '"promptsource:x"'),
    ("test_split", '"train"'),
    ("unsafe_code", "true"),
])
def test_forbidden_keys_are_named(key, value):
    refused(with_config(f"{key} = {value}"), "task 'mc'", f"config key '{key}' is not allowed")


@pytest.mark.parametrize("key", ["process_docs", "process_results"])
def test_python_keys_take_only_lm_evals_own_functions(key):
    """Auditor Python stays refused; benchmarks.lm_eval_functions / tests/test_builtin_presets.py cover the rest."""
    refused(with_config(f'{key} = "utils.process"'), "task 'mc'", f"{key} names Python code",
            "only a function of lm-eval's own task code")


def test_unknown_config_key():
    refused(with_config("should_decontaminate = true"), "task 'mc'", "'should_decontaminate'", "allowed:")


def test_function_tag_refused():
    data = BASE.replace('doc_to_text = "{{question}}\\nAnswer:"', 'doc_to_text = "!function utils.doc_to_text"')
    refused(data.encode(), "task 'mc'", "config.doc_to_text", "!function")


@pytest.mark.parametrize("metric, fragment", [
    ('"rouge"', "metric 'rouge' is not allowed"),
    ('"bleu"', "does not apply to output_type multiple_choice"),
    ('"likelihood"', "not allowed"),
])
def test_metric_allow_list(metric, fragment):
    data = BASE.replace('metric = "acc", aggregation = "mean", higher_is_better = true', f"metric = {metric}")
    refused(data.encode(), "task 'mc'", "metric_list[0]", fragment)


def test_metric_options_checked():
    acc = 'metric = "acc", aggregation = "mean", higher_is_better = true'
    refused(BASE.replace(acc, 'metric = "acc", hf_evaluate = true').encode(), "hf_evaluate is not allowed")
    refused(BASE.replace(acc, 'metric = "acc", aggregation = "median"').encode(), "aggregation 'median'")
    refused(BASE.replace(acc, 'metric = "acc", higher_is_better = false').encode(), "higher_is_better")
    refused(BASE.replace(acc, 'metric = "acc", ignore_case = true').encode(), "ignore_case")
    refused(BASE.replace("metric_list = [{ " + acc + " }]", "").encode(), "metric_list is required")


GEN = BASE.replace('output_type = "multiple_choice"', 'output_type = "generate_until"').replace(
    'doc_to_choice = "{{choices}}"\n', "").replace('metric = "acc"', 'metric = "exact_match"')


def test_generation_kwargs_checked():
    ok = parse_spec((GEN + 'generation_kwargs = { until = "\\n", max_gen_toks = 32, temperature = 0 }\n').encode())
    assert ok.tasks[0].config["generation_kwargs"] == {"until": ["\n"], "max_gen_toks": 32, "temperature": 0.0}
    refused((GEN + "generation_kwargs = { max_gen_toks = 0 }\n").encode(), "max_gen_toks")
    refused((GEN + 'generation_kwargs = { custom_generate = "hub/repo" }\n').encode(), "custom_generate")
    refused((GEN + "generation_kwargs = { until = [] }\n").encode(), "until")
    refused((GEN + "generation_kwargs = { top_p = 1.5 }\n").encode(), "top_p")
    refused(with_config("generation_kwargs = { max_gen_toks = 4 }"), "only apply to output_type generate_until")


def test_filters_checked():
    good = parse_spec((GEN + 'filter_list = [{ name = "x", filter = [{ function = "regex", regex_pattern = "(\\\\d+)" }, '
                             '{ function = "take_first" }] }]\n').encode())
    assert good.tasks[0].config["filter_list"][0]["filter"][0] == {"function": "regex", "regex_pattern": "(\\d+)"}
    refused((GEN + 'filter_list = [{ name = "x", filter = [{ function = "custom", filter_fn = "m.f" }] }]\n').encode(),
            "filter function 'custom' is not allowed")
    refused((GEN + 'filter_list = [{ name = "x", filter = [{ function = "regex", regex_pattern = "(" }] }]\n').encode(),
            "invalid regular expression")


@pytest.mark.parametrize("template, fragment", [
    ("{{ question.__class__ }}", "attribute '__class__'"),
    ("{{ question['__class__'] }}", "item '__class__'"),
    ("{{ cycler.__init__.__globals__ }}", "may not access the attribute '__"),
    ("{{ question|attr('x') }}", "filter 'attr'"),
    ("{{ question|random }}", "filter 'random'"),
    ("{% include 'x' %}", "may not load other templates"),
    ("{{ question", "not a valid Jinja template"),
    ("{{ question|map(attribute='__class__')|list }}", "may not name '__class__'"),
])
def test_unsafe_templates_refused(template, fragment):
    data = BASE.replace('doc_to_text = "{{question}}\\nAnswer:"', f'doc_to_text = "{template}"')
    refused(data.encode(), "task 'mc'", "doc_to_text", fragment)


def test_metric_table_matches_lm_eval_registry():
    """The allow-list must describe what lm-eval 0.4.13 actually registers, else a metric would fall
    back to `evaluate.load` (network) or aggregate differently than the spec says."""
    import lm_eval.api.metrics  # noqa: F401  (registers the metrics)
    import lm_eval.filters  # noqa: F401  (registers the filters)
    from lm_eval.api import registry

    from benchmarks.judges import PROJECT_METRICS, judge_metrics

    # The project's own metrics (benchmarks.judges) must not shadow one of lm-eval's: checked before
    # they are registered (in a fresh process; another test may have run an audit, which registers them).
    for name in set(METRICS) - set(PROJECT_METRICS):
        assert registry.metric_registry.get(name).__module__.startswith("lm_eval."), name
    for name, (fn, _) in PROJECT_METRICS.items():
        assert registry.metric_registry.get(name, fn) is fn, f"lm-eval registers {name} itself"
    with judge_metrics(None):
        for name, rule in METRICS.items():
            assert name in registry.metric_registry, name
            assert registry.get_metric_aggregation(name) is registry.get_aggregation(rule.aggregation), name
            assert registry.is_higher_better(name) is rule.higher_is_better, name
            assert (rule.judge_kind is not None) <= (name in PROJECT_METRICS), name
    for name in FILTERS:
        assert name in registry.filter_registry, name


def test_yaml_export_is_stock_lm_eval_config():
    spec = parse_spec(demo_spec_toml().encode())
    out = spec_to_lm_eval_yaml(spec, "data")
    assert set(out) == {"aa_demo_mc", "aa_demo_gen"}
    mc = yaml.safe_load(out["aa_demo_mc"])
    assert mc["task"] == "aa_demo_mc"
    assert mc["dataset_path"] == "json"
    assert mc["dataset_kwargs"] == {"data_files": {"test": "data/mc.jsonl"}}
    assert mc["test_split"] == "test"
    assert mc["doc_to_text"] == spec.tasks[0].config["doc_to_text"]
    assert mc["metric_list"] == spec.tasks[0].config["metric_list"]
    gen = yaml.safe_load(out["aa_demo_gen"])
    assert gen["generation_kwargs"]["until"] == ["\n", "Question:"]
    assert "!function" not in out["aa_demo_gen"]


def test_demo_spec_is_toml():
    assert tomllib.loads(demo_spec_toml())["seed"] == 1234


def test_fewshot_file_and_sampler():
    data = BASE.replace('split = "test"', 'split = "test"\nfewshot_dataset = "data/dev.jsonl"\nfewshot_split = "dev"')
    spec = parse_spec(with_config('num_fewshot = 5\nfewshot_config = { sampler = "first_n" }', data))
    task = spec.tasks[0]
    assert task.files == {"test": "data/mc.jsonl", "dev": "data/dev.jsonl"}
    assert spec.datasets == ["data/mc.jsonl", "data/dev.jsonl"]
    cfg = yaml.safe_load(spec_to_lm_eval_yaml(spec, "d")["mc"])
    assert cfg["fewshot_split"] == "dev" and cfg["fewshot_config"] == {"sampler": "first_n"}
    assert cfg["dataset_kwargs"]["data_files"] == {"test": "d/data/mc.jsonl", "dev": "d/data/dev.jsonl"}
    refused(BASE.replace('split = "test"', 'split = "test"\nfewshot_split = "dev"').encode(), "needs fewshot_dataset")
    refused(BASE.replace('split = "test"', 'split = "test"\nfewshot_dataset = "dev.jsonl"\nfewshot_split = "test"')
            .encode(), "must differ")
    refused(with_config('fewshot_config = { sampler = "custom" }'), "fewshot_config may only set sampler")
    refused(with_config('fewshot_config = { sampler = "first_n", samples = [] }'), "fewshot_config")
    refused(with_config("num_fewshot = 100"), "num_fewshot")


# --- run bounds: min_documents and deadline ----------------------------------------------------


def top(line: str) -> bytes:
    """BASE with a top-level line added."""
    return BASE.replace('output = "aggregate"', f'{line}\noutput = "aggregate"').encode()


def test_min_documents_and_deadline_defaults_and_values():
    spec = parse_spec(BASE.encode())
    assert (spec.min_documents, spec.deadline_s) == (DEFAULT_MIN_DOCUMENTS, DEFAULT_DEADLINE_S) == (20, 3600)
    assert parse_spec(top("min_documents = 1")).min_documents == 1
    assert parse_spec(top("min_documents = 500")).min_documents == 500
    for text, seconds in (("90s", 90), ("30m", 1800), ("2h", 7200), ("168h", 604800), ("10080m", 604800)):
        assert parse_spec(top(f'deadline = "{text}"')).deadline_s == seconds


@pytest.mark.parametrize("line, fragment", [
    ("min_documents = 0", "`min_documents` must be an integer from 1 to 1000000"),
    ("min_documents = 1000001", "`min_documents` must be an integer"),
    ("min_documents = " + "9" * 400, "`min_documents` must be an integer"),
    ("min_documents = 0x" + "f" * 5000, "`min_documents` must be an integer"),
    ("min_documents = 20.0", "`min_documents` must be an integer"),
    ("min_documents = true", "`min_documents` must be an integer"),
    ('min_documents = "20"', "`min_documents` must be an integer"),
    ('deadline = "0s"', 'deadline must be a string like "90s"'),
    ('deadline = "0h"', "from 1 second to 168 hours"),
    ('deadline = "169h"', "168 hours (7 days)"),
    ('deadline = "604801s"', "deadline must be"),
    ('deadline = "' + "9" * 5000 + 'h"', "deadline must be"),
    ('deadline = "2d"', "deadline must be"),
    ('deadline = "1.5h"', "deadline must be"),
    ('deadline = " 2h"', "deadline must be"),
    ('deadline = "-1s"', "deadline must be"),
    ("deadline = 7200", "deadline must be a string"),
    ("deadline = 1979-05-27", "deadline must be a string"),
])
def test_min_documents_and_deadline_refused(line, fragment):
    refused(top(line), "spec: ", fragment)


def test_yaml_export_ignores_run_bounds():
    """min_documents and deadline bound the enclave's run; a stock lm-eval reproduction is unchanged."""
    plain = parse_spec(demo_spec_toml().encode())
    bounded = parse_spec(demo_spec_toml().replace('output = "aggregate"',
                                                  'min_documents = 5\ndeadline = "2h"\noutput = "aggregate"').encode())
    assert spec_to_lm_eval_yaml(bounded, "data") == spec_to_lm_eval_yaml(plain, "data")


# --- crafted specs: a SpecError with a message, never a traceback ------------------------------

TEMPLATE = 'doc_to_text = "{{question}}\\nAnswer:"'


def with_template(template: str) -> bytes:
    return BASE.replace(TEMPLATE, f'doc_to_text = "{template}"').encode()


def with_regex(pattern: str) -> bytes:
    step = f'{{ function = "regex", regex_pattern = "{pattern}" }}'
    return with_config(f'filter_list = [{{ name = "f", filter = [{step}] }}]')


@pytest.mark.parametrize("data, fragment", [
    (b"a = " + b"[" * 100_000 + b"]" * 100_000, f"nested more than {MAX_NESTING} deep"),
    (b"a = " + b"{b = " * 100_000 + b"1" + b"}" * 100_000, f"nested more than {MAX_NESTING} deep"),
    (b"a = " + b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1), f"nested more than {MAX_NESTING} deep"),
    (b"a" + b".a" * 100_000 + b" = 1", f"more than {MAX_KEY_PARTS} parts"),
    (b"[" + b"a." * 100_000 + b"a]", f"more than {MAX_KEY_PARTS} parts"),
    (b"[[" + b'"a" . ' * MAX_KEY_PARTS + b"a]]", f"more than {MAX_KEY_PARTS} parts"),
    (b"a = " + b"9" * 5000, "an integer has too many digits"),
    (BASE.replace("version = 1", "version = 1" + "0" * 400).encode(), "`version` must be an integer"),
    (b"a = 1\n" + b"#" * MAX_SPEC_BYTES, f"at most {MAX_SPEC_BYTES} are allowed"),
    (b'name = "\xc3\x28"', "not UTF-8 text (byte 8)"),
    (b"\x00\x01\x02", "malformed TOML"),
    (BASE.replace("[[task]]", "".join(f"[k{i}]\n" for i in range(1000)) + "[[task]]").encode(),
     "unknown key(s) k0, k1, k10, k100, k101, k102, k103, k104, k105, k106 and 990 more (allowed:"),
    (with_config("metadata = { version = 1" + "0" * 400 + " }"), "metadata.version must be a number from 0"),
    (with_config("metadata = { version = inf }"), "metadata.version must be a number from 0"),
    (with_config("metadata = { version = nan }"), "metadata.version must be a number from 0"),
    (with_config("repeats = 0x" + "f" * 5000), "`repeats` must be an integer"),
    (with_template("{{" + "(" * 100_000 + "1" + ")" * 100_000 + "}}"), "doc_to_text is nested too deeply"),
    (with_template("{% if 1 %}" * 120 + "{% endif %}" * 120), "doc_to_text is nested too deeply"),
    (with_template("{% for x in y %}" * 60 + "{% endfor %}" * 60), "doc_to_text is nested too deeply"),
    (with_template("{{ x" + ".a" * 250 + "}}"), "doc_to_text is nested too deeply"),
    (with_regex("(" * 1000 + ")" * 1000), "regular expression too complex"),
    (with_regex("a{99999999999}"), "regular expression too complex"),
])
def test_crafted_specs_are_spec_errors(data: bytes, fragment: str):
    refused(data, fragment)


def test_brackets_dots_quotes_and_hashes_inside_strings_are_not_nesting():
    deep = "[" * 40 + "{" * 40 + "." * 40 + "#"
    # a multi-line string may end with one or two quotes of its own before the closing three
    lines = [f"# {deep}", f'description = """\n{deep}\\""""""', f"'a.b.c.d.e.f.g.h.i.j' = '''{deep}'''''"]
    toml = BASE.replace('output = "aggregate"', 'output = "aggregate"\n' + "\n".join(lines))
    doc = tomllib.loads(toml)
    assert doc["description"] == deep + '"""' and doc["a.b.c.d.e.f.g.h.i.j"] == deep + "''"
    refused(toml.encode(), "unknown key(s) a.b.c.d.e.f.g.h.i.j (allowed")  # parsed, then refused by name
    spec = parse_spec(BASE.replace('output = "aggregate"', f"output = 'aggregate'\ndescription = '{deep}'").encode())
    assert spec.description == deep
    plain = "[" * 40 + "{ " * 40 + "." * 40 + "#"  # no "{{": that would be Jinja
    assert parse_spec(with_template(f'{{{{question}}}}{plain}\\"[\\\\')).tasks[0].config["doc_to_text"] == \
        "{{question}}" + plain + '"[\\'


def _escaped(c: str) -> str:
    return "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f" else c


def _multiline_basic(text: str) -> str:
    """Newlines as they are, and quotes raw in runs of up to two (the rest escaped)."""
    out, run = [], 0
    for c in text:
        run = run + 1 if c == '"' else 0
        out.append(c if c == "\n" or (c == '"' and run <= 2) else _escaped(c))
        run = 0 if run > 2 else run
    return '"""\n' + "".join(out) + '"""'


def _plain(text: str) -> bool:
    return not any((ord(c) < 0x20 and c not in "\t\n") or c == "\x7f" for c in text)


def toml_string(text: str, style: int) -> str:
    """`text` as one of TOML's four kinds of string, where that kind can hold it."""
    if style == 1 and _plain(text) and "'" not in text and "\n" not in text:
        return f"'{text}'"
    if style == 2 and _plain(text) and "'''" not in text and not text.startswith("\n"):
        return f"'''{text}'''"
    if style == 3:
        return _multiline_basic(text)
    return '"' + "".join(map(_escaped, text)) + '"'


def toml_value(value: Any, style: int) -> str:
    if isinstance(value, str):
        return toml_string(value, style)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[\n" + ",\n".join(toml_value(v, (style + i) % 4) for i, v in enumerate(value)) + "]"
    return "{ " + ", ".join(f"{toml_string(k, style % 2)} = {toml_value(v, (style + 1) % 4)}"
                            for k, v in value.items()) + " }"


def nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


TRICKY = st.text(alphabet=st.sampled_from("ab.#[]{}=,\"'\\\n\t\x00\x7f é"), max_size=12)
VALUES = st.recursive(
    TRICKY | st.integers() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=40,
)
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(VALUES, st.integers(0, 3), st.lists(st.booleans(), max_size=2 * MAX_NESTING))
def test_valid_toml_of_any_shape_parses_or_is_refused_by_name(value: Any, style: int, wraps: list[bool]):
    """Strings full of brackets, quotes, dots and '#' never confuse the nesting scan: a value nested
    within the limit reaches the key check; one nested deeper is refused as too deep."""
    for in_list in wraps:  # reach past the limit sometimes
        value = [value] if in_list else {"k.[{": value}
    text = BASE.replace('output = "aggregate"', 'output = "aggregate"\nx = ' + toml_value(value, style))
    assert tomllib.loads(text)["x"] == value
    refused(text.encode(), "unknown key(s) x" if nesting(value) <= MAX_NESTING else "nested more than")


TOML_PIECES = st.sampled_from([
    "[", "]", "{", "}", "[[", "]]", "=", ",", ".", "\n", " ", "#", '"', "'", '"""', "'''", "\\", "a", "task",
    "config", "1", "1e999", "0x" + "f" * 40, "9" * 5000, "true", "1979-05-27", "inf", "nan", "\x00", "é",
    "{{", "}}", "{%", "%}", "(", ")",
])
SPEC_KEYS = ["name", "version", "seed", "output", "batch_size", "min_documents", "deadline", "task", "config",
             "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "metric",
             "filter_list", "filter", "function", "regex_pattern", "generation_kwargs", "until", "metadata",
             "engine", "dtype", "parallelize", "tensor_parallel_size", "gpu_memory_utilization"]


@st.composite
def crafted_specs(draw: st.DrawFn) -> bytes:
    """Random bytes, random TOML-ish text, or the demo spec with pieces spliced in or a key's value
    replaced by something deep, huge or odd."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return "".join(draw(st.lists(TOML_PIECES, max_size=60))).encode()
    spec = demo_spec_toml()
    if kind == 2:
        at = draw(st.integers(0, len(spec)))
        return (spec[:at] + "".join(draw(st.lists(TOML_PIECES, max_size=20))) + spec[at:]).encode()
    n = draw(st.integers(0, 100_000))
    value = draw(st.sampled_from([
        "[" * n + "]" * n, "{a = " * n + "1" + "}" * n, "1" + "0" * n, '"' + "{{(" * n + '"',
        "'" + "{%if 1%}" * (n % 300) + "'", toml_value(draw(VALUES), draw(st.integers(0, 3))),
    ]))
    key = draw(st.sampled_from(SPEC_KEYS))
    if draw(st.booleans()):
        return (f"{key} = {value}\n" + spec).encode()
    return spec.replace(f"\n{key} = ", f"\n{key} = {value}\n_ = ", 1).encode()


@FUZZ
@given(crafted_specs())
def test_parse_spec_raises_only_spec_errors(data: bytes):
    try:
        parse_spec(data)
    except UnusableInput as exc:
        assert isinstance(exc, SpecError) and str(exc)


@pytest.mark.parametrize("template", [
    "{{ 'x' * 10**10 }}",
    "{{ 'x' * 100000 * 100000 }}",
    "{{ ('x' ~ 'y') * 10**10 }}",
    "{{ 'x'|center(10**10) }}",
    "{{ 'x'|indent(10**10) }}",
    "{{ [0] * 10**10 }}",
    "{{ 9 ** 9 ** 9 }}",
])
def test_checking_a_template_never_computes_its_constants(template: str) -> None:
    """Jinja folds constant expressions when it compiles. The spec check compiles every template in
    the enclave server, so it must do that in the limited sandbox: before, `'x' * 10**10` built a
    ten-gigabyte string at upload time."""
    import resource
    import time

    from benchmarks.demo_assets import demo_spec_toml

    text = demo_spec_toml().replace('doc_to_text = "Question: {{question}}', 'doc_to_text = "' + template + '{{question}}', 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    parse_spec(text.encode())  # it compiles; rendering it is what the runner refuses (tests/test_runner.py)
    assert time.monotonic() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def with_engine(lines: str, top: str = "") -> bytes:
    """BASE with an [engine] table (and optionally extra top-level lines)."""
    base = BASE.replace('output = "aggregate"', 'output = "aggregate"\n' + top) if top else BASE
    return (base + "\n[engine]\n" + lines + "\n").encode()


def test_engine_defaults_are_hf_batch_1_checkpoint_dtype():
    engine = parse_spec(BASE.encode()).engine
    assert engine == EngineSpec()
    assert (engine.name, engine.batch_size, engine.dtype, engine.parallelize) == ("hf", 1, "auto", False)
    assert engine.settings() == {"batch_size": 1, "dtype": "auto", "parallelize": False}


def test_engine_hf_keys():
    spec = parse_spec(with_engine('name = "hf"\nbatch_size = "auto"\nmax_batch_size = 16\ndtype = "bfloat16"\n'
                                  "parallelize = true"))
    assert spec.batch_size == "auto" and spec.engine.max_batch_size == 16
    assert spec.engine.settings() == {"batch_size": "auto", "max_batch_size": 16, "dtype": "bfloat16",
                                      "parallelize": True}
    for dtype in DTYPES:
        assert parse_spec(with_engine(f'dtype = "{dtype}"')).engine.dtype == dtype
    assert parse_spec(with_engine("batch_size = 8")).batch_size == 8


def test_engine_vllm_keys_and_defaults():
    engine = parse_spec(with_engine('name = "vllm"')).engine
    assert engine.settings() == {"batch_size": "auto", "dtype": "auto", "tensor_parallel_size": 1,
                                 "data_parallel_size": 1, "gpu_memory_utilization": 0.9, "max_model_len": None}
    engine = parse_spec(with_engine('name = "vllm"\ntensor_parallel_size = 8\ndata_parallel_size = 2\n'
                                    'gpu_memory_utilization = 0.85\nmax_model_len = 4096\nbatch_size = 32\n'
                                    'dtype = "float16"')).engine
    assert (engine.tensor_parallel_size, engine.data_parallel_size, engine.gpu_memory_utilization,
            engine.max_model_len, engine.batch_size, engine.dtype) == (8, 2, 0.85, 4096, 32, "float16")


def test_top_level_batch_size_still_means_the_hf_batch():
    spec = parse_spec(BASE.replace('output = "aggregate"', 'output = "aggregate"\nbatch_size = 4').encode())
    assert spec.engine == EngineSpec(batch_size=4) and spec.batch_size == 4
    refused(with_engine("batch_size = 2", top="batch_size = 4"), "top-level `batch_size`", "[engine] batch_size")
    refused(with_engine('name = "vllm"', top="batch_size = 4"), "top-level `batch_size`", "only under [engine]")
    refused(BASE.replace('output = "aggregate"', 'output = "aggregate"\nbatch_size = "auto"').encode(),
            "top-level `batch_size` must be an integer", 'batch_size = "auto"', "under [engine]")


@pytest.mark.parametrize("lines, fragments", [
    ('name = "tgi"', ["name 'tgi' must be one of hf, vllm"]),
    ("name = 1", ["`name` must be a string"]),
    ('batch_size = "max"', ['`batch_size` must be an integer from 1 to 1024 or "auto"']),
    ("batch_size = 0", ["`batch_size` must be an integer"]),
    ("batch_size = 4096", ["`batch_size` must be an integer"]),
    ("batch_size = true", ["`batch_size` must be an integer"]),
    ("batch_size = 2.0", ["`batch_size` must be an integer"]),
    ('dtype = "fp16"', ["dtype 'fp16' must be one of auto, bfloat16, float16, float32", "config.json"]),
    ('dtype = "int8"', ["must be one of auto"]),
    ("max_batch_size = 8", ["max_batch_size only applies with batch_size = \"auto\""]),
    ('batch_size = "auto"\nmax_batch_size = 0', ["`max_batch_size` must be an integer from 1 to 1024"]),
    ('parallelize = "yes"', ["`parallelize` must be true or false"]),
    ("tensor_parallel_size = 2", ["unknown key(s) tensor_parallel_size", "(name = 'hf')"]),
    ('name = "vllm"\nparallelize = true', ["unknown key(s) parallelize", "(name = 'vllm')"]),
    ('name = "vllm"\nmax_batch_size = 8', ["unknown key(s) max_batch_size"]),
    ('name = "vllm"\ntensor_parallel_size = 0', ["`tensor_parallel_size` must be an integer from 1 to 64"]),
    ('name = "vllm"\ndata_parallel_size = 65', ["`data_parallel_size` must be an integer from 1 to 64"]),
    ('name = "vllm"\ngpu_memory_utilization = 0.0', ["`gpu_memory_utilization` must be above 0"]),
    ('name = "vllm"\ngpu_memory_utilization = 1.5', ["`gpu_memory_utilization` must be a number from 0.0 to 1.0"]),
    ('name = "vllm"\nmax_model_len = 0', ["`max_model_len` must be an integer from 1"]),
    ("device = \"cuda\"", ["unknown key(s) device"]),
])
def test_engine_bad_values_are_named(lines: str, fragments: list[str]):
    refused(with_engine(lines), "spec: [engine]", *fragments)


def test_engine_must_be_a_table():
    refused(BASE.replace('output = "aggregate"', 'output = "aggregate"\nengine = "vllm"').encode(),
            "`engine` must be a table")


def test_lm_eval_cli_args_load_the_model_as_the_enclave_does():
    hf = parse_spec(with_engine('batch_size = "auto"\nmax_batch_size = 16\ndtype = "bfloat16"\nparallelize = true'))
    assert lm_eval_cli_args(hf.engine, "model") == [
        "--model", "hf", "--model_args", "pretrained=model,dtype=bfloat16,parallelize=True",
        "--batch_size", "auto", "--max_batch_size", "16"]
    vllm = parse_spec(with_engine('name = "vllm"\ntensor_parallel_size = 2'))
    assert lm_eval_cli_args(vllm.engine, "m") == [
        "--model", "vllm", "--model_args", "pretrained=m,dtype=auto,data_parallel_size=1,gpu_memory_utilization=0.9,"
        "tensor_parallel_size=2", "--batch_size", "auto"]


def judges(*tables: str) -> bytes:
    """BASE with [[judge]] tables (TOML inline bodies) before its task."""
    body = "".join(f"\n[[judge]]\n{t}\n" for t in tables)
    return BASE.replace("\n[[task]]", body + "\n[[task]]", 1).encode()


def test_judges_parse_in_order():
    gen = parse_spec(demo_spec_toml().encode()).tasks[1]
    assert gen.config["output_type"] == "generate_until"
    text = judges('name = "tox"\nkind = "classifier"', 'name = "enc"\nkind = "encoder"').decode() + f"""
[[task]]
name = "judged"
dataset = "gen.jsonl"

[task.config]
output_type = "generate_until"
doc_to_text = {json.dumps(gen.config["doc_to_text"])}
doc_to_target = {json.dumps(gen.config["doc_to_target"])}
metric_list = [{{ metric = "judge_similarity", judge = "enc" }},
               {{ metric = "judge_toxicity", judge = "tox", label = "toxic" }}]
"""
    spec = parse_spec(text.encode())
    assert [(j.name, j.kind) for j in spec.judges] == [("tox", "classifier"), ("enc", "encoder")]
    assert parse_spec(BASE.encode()).judges == ()
    refused(judges('name = "tox"\nkind = "classifier"'), "judge 'tox' is used by no metric")


@pytest.mark.parametrize("tables, fragment", [
    (['name = "tox"'], "judge #1: `kind` is required"),
    (['kind = "encoder"'], "judge #1: `name` is required"),
    (['name = "tox"\nkind = "regressor"'], "kind 'regressor' must be one of classifier, encoder, causal_lm"),
    (['name = "../x"\nkind = "encoder"'], "folder in the sealed judges asset"),
    (['name = "tox"\nkind = "encoder"\npath = "/etc"'], "unknown key(s) path (allowed: kind, name)"),
    (['name = "a"\nkind = "encoder"', 'name = "a"\nkind = "classifier"'], "judge 'a': the name is used twice"),
    ([f'name = "j{i}"\nkind = "encoder"' for i in range(9)], "9 judges; at most 8"),
])
def test_judges_refused(tables, fragment):
    refused(judges(*tables), fragment)
