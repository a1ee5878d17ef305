"""The audit spec: valid specs parse, every forbidden construct is refused with a clear message."""

from __future__ import annotations

import base64
import tomllib

import pytest
import yaml

from benchmarks.demo_assets import demo_spec_toml
from benchmarks.spec import (
    FILTERS,
    METRICS,
    SpecError,
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
    ("process_docs", '"utils.process"'),
    ("process_results", '"utils.score"'),
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

    for name, rule in METRICS.items():
        assert name in registry.metric_registry, name
        assert registry.get_metric_aggregation(name) is registry.get_aggregation(rule.aggregation), name
        assert registry.is_higher_better(name) is rule.higher_is_better, name
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
