"""A workflow version's graph: its shape, its validation, and what each node will be asked.

    {"inputs":  {NAME: {"type": "text"|"image"|"integer"|"number"|"boolean", "default"?}},
     "nodes":   [{"id", "op", "params"?: {...}, "inputs"?: {PORT: "$inputs.NAME"|"$nodes.ID"}}],
     "outputs": {NAME: "$nodes.ID"}}

:func:`validate` checks a graph as a whole and reports every problem at once, each naming its
node and port (``nodes.upscale.inputs.image``). :func:`plan` walks a valid graph in dependency
order with the run's input values and image sizes, and decides each node's request: a provider
node's through the same normalisation as any generation (so its params are refused or quoted
exactly as a generation's would be), a local node's params checked and its output size inferred.
Validation is :func:`plan` over stand-ins for the inputs a run will give.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from application.catalogue import Catalogue, ModelSpec, UnknownModel
from application.errors import Invalid, InvalidRequest
from application.inputs import ImageInput
from application.normalise import GenerationRequest, Normalised
from application.text import NUL_MESSAGE, nul_paths
from application.workflow_ops import check_params, output_size
from domain.workflow import LOCAL_OPS, PROVIDER_OPS, binding_source, dependencies

#: Bounds that keep a hostile graph from hurting the engine (named in the README).
MAX_NODES = 200
MAX_DEPTH = 50
MAX_FAN_OUT = 64
MAX_INPUTS = 32
INPUT_TYPES = ("text", "image", "integer", "number", "boolean")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_BINDING = re.compile(r"^\$(inputs|nodes)\.([A-Za-z_][A-Za-z0-9_-]{0,63})$")
#: What a run input of an image type stands in as while a version is validated.
_STAND_IN = ImageInput("stand-in", "stand-in", 1024, 1024, "image/png", "0" * 64)

#: Each port an op takes: its type and whether it must be bound. A port named like a param
#: (``seed``, ``width``) overrides that param with the bound value.
_PROVIDER_VALUE_PORTS = {
    "prompt": "text",
    "negative_prompt": "text",
    "aspect_ratio": "text",
    "seed": "integer",
    "steps": "integer",
    "width": "integer",
    "height": "integer",
    "guidance": "number",
}
PORTS: dict[str, dict[str, tuple[str, bool]]] = {
    "generate": {},
    "video": {"duration_s": ("integer", False)},
    "upscale": {"image": ("image", True), "scale": ("integer", False)},
    "edit": {"image": ("image", True), "mask": ("image", False)},
    "remove_background": {"image": ("image", True)},
    "resize": {
        "image": ("image", True),
        "width": ("integer", False),
        "height": ("integer", False),
        "fit": ("text", False),
        "enlarge": ("boolean", False),
    },
    "crop": {
        "image": ("image", True),
        **dict.fromkeys(("x", "y", "width", "height"), ("integer", False)),
    },
    "colour_correct": {
        "image": ("image", True),
        **dict.fromkeys(("brightness", "contrast", "saturation", "gamma"), ("number", False)),
    },
    "composite": {
        "base": ("image", True),
        "overlay": ("image", True),
        "x": ("integer", False),
        "y": ("integer", False),
        "opacity": ("number", False),
    },
    "grayscale": {"image": ("image", True)},
}
for _op in PROVIDER_OPS:
    PORTS[_op] = {**{p: (t, False) for p, t in _PROVIDER_VALUE_PORTS.items()}, **PORTS[_op]}
#: Provider ops whose models take no prompt.
_NO_PROMPT = frozenset({"upscale", "remove_background"})


class InvalidGraph(Invalid):
    """A graph (or a run's inputs) with problems, each ``(field, message)`` (HTTP 422)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems[:5]))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class NodePlan:
    """What a node will be asked: a provider node's normalised request (and its quote), a
    local node's params; and the size of what it makes."""

    id: str
    op: str
    params: dict[str, Any]
    size: tuple[int, int] | None  # None: a video
    request: GenerationRequest | None = None
    normalised: Normalised | None = None

    @property
    def quote(self) -> int:
        return self.normalised.cost_units if self.normalised else 0


@dataclass
class _Problems:
    found: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.found.append((where, message))


def output_type(op: str) -> str:
    return "video" if op == "video" else "image"


def _value_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "text"
    return None


def _accepts(port_type: str, given: str) -> bool:
    return port_type == given or (port_type == "number" and given == "integer")


def validate_shape(graph: Any) -> list[tuple[str, str]]:
    """Problems of the graph's shape, bindings, types, bounds and cycles (no catalogue)."""
    problems = _Problems()
    if not isinstance(graph, Mapping):
        return [("graph", "must be an object with inputs, nodes and outputs")]
    nuls = nul_paths(graph, "")
    if nuls:
        return [(path, NUL_MESSAGE) for path in nuls]
    for key in sorted(set(graph) - {"inputs", "nodes", "outputs"}):
        problems.add(f"graph.{key}", "not a part of a graph")
    inputs = graph.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        problems.add("inputs", "must be an object of named inputs")
        inputs = {}
    if len(inputs) > MAX_INPUTS:
        problems.add("inputs", f"at most {MAX_INPUTS} inputs")
    for name, spec in inputs.items():
        _check_input(problems, name, spec)
    ids = _node_ids(problems, graph.get("nodes"))
    if ids is None:
        return problems.found
    for node in graph["nodes"]:
        _check_node(problems, node, ids, inputs)
    _check_outputs(problems, graph.get("outputs") or {}, ids)
    if not problems.found:
        _check_acyclic(problems, graph)
    return problems.found


def _node_ids(problems: _Problems, nodes: Any) -> dict[str, str] | None:
    """Each node's op by id; ``None`` when the nodes cannot be checked one by one."""
    if not isinstance(nodes, list) or not nodes:
        problems.add("nodes", "must be a non-empty list of nodes")
        return None
    if len(nodes) > MAX_NODES:
        problems.add("nodes", f"at most {MAX_NODES} nodes")
        return None
    ids: dict[str, str] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, Mapping) or not isinstance(node.get("id"), str):
            problems.add(f"nodes[{index}]", "must be an object with a string id")
        elif not _NAME.match(node["id"]):
            problems.add(f"nodes[{index}].id", "letters, digits, _ and -, at most 64")
        elif node["id"] in ids:
            problems.add(f"nodes.{node['id']}.id", "two nodes share this id")
        else:
            ids[node["id"]] = str(node.get("op"))
    return ids if len(ids) == len(nodes) else None


def _check_outputs(problems: _Problems, outputs: Any, ids: Mapping[str, str]) -> None:
    if not isinstance(outputs, Mapping):
        problems.add("outputs", "must be an object of named outputs")
        return
    for name, binding in outputs.items():
        match = _BINDING.match(binding) if isinstance(binding, str) else None
        if not _NAME.match(str(name)):
            problems.add(f"outputs.{name}", "letters, digits, _ and -, at most 64")
        if match is None or match.group(1) != "nodes":
            problems.add(f"outputs.{name}", 'must be "$nodes.ID"')
        elif match.group(2) not in ids:
            problems.add(f"outputs.{name}", f"no node {match.group(2)!r}")


def _check_input(problems: _Problems, name: Any, spec: Any) -> None:
    where = f"inputs.{name}"
    if not isinstance(name, str) or not _NAME.match(name):
        problems.add(where, "letters, digits, _ and -, at most 64")
    if not isinstance(spec, Mapping) or spec.get("type") not in INPUT_TYPES:
        problems.add(f"{where}.type", f"one of {', '.join(INPUT_TYPES)}")
        return
    if set(spec) - {"type", "default", "description"}:
        problems.add(where, "takes type, default and description only")
    if "default" in spec:
        given = _value_type(spec["default"])
        if spec["type"] == "image" or given is None or not _accepts(spec["type"], given):
            problems.add(f"{where}.default", f"must be a {spec['type']} value")


def _check_node(
    problems: _Problems, node: Mapping[str, Any], ids: Mapping[str, str], inputs: Mapping[str, Any]
) -> None:
    where = f"nodes.{node['id']}"
    op = node.get("op")
    if set(node) - {"id", "op", "params", "inputs"}:
        problems.add(where, "takes id, op, params and inputs only")
    if op not in PORTS:
        problems.add(f"{where}.op", f"unknown operation {op!r}")
        return
    if not isinstance(node.get("params", {}), Mapping):
        problems.add(f"{where}.params", "must be an object")
    bindings = node.get("inputs") or {}
    if not isinstance(bindings, Mapping):
        problems.add(f"{where}.inputs", "must be an object of port bindings")
        return
    ports = PORTS[op]
    for port, binding in bindings.items():
        at = f"{where}.inputs.{port}"
        if port not in ports:
            problems.add(at, f"{op} has no port {port!r} (it has {', '.join(sorted(ports))})")
            continue
        refused = _binding_problem(ports[port][0], binding, ids, inputs)
        if refused:
            problems.add(at, refused)
    for port, (_, required) in ports.items():
        if required and port not in bindings:
            problems.add(f"{where}.inputs.{port}", "required: bind it to an input or a node")


def _binding_problem(
    expected: str, binding: Any, ids: Mapping[str, str], inputs: Mapping[str, Any]
) -> str | None:
    """What is wrong with binding a port of type ``expected`` to ``binding``, if anything."""
    match = _BINDING.match(binding) if isinstance(binding, str) else None
    if match is None:
        return 'must be "$inputs.NAME" or "$nodes.ID"'
    kind, name = match.groups()
    if kind == "nodes":
        if name not in ids:
            return f"no node {name!r}"
        given = output_type(ids[name])
    else:
        spec = inputs.get(name)
        if not isinstance(spec, Mapping) or spec.get("type") not in INPUT_TYPES:
            return f"no input {name!r}"
        given = str(spec["type"])
    if not _accepts(expected, given):
        return f"takes a {expected}, not the {given} of {binding}"
    return None


def _check_acyclic(problems: _Problems, graph: Mapping[str, Any]) -> None:
    """Kahn's algorithm: what is never freed is on a cycle. Also bounds depth and fan-out."""
    deps = dependencies(graph)
    waiting = {node: len(ups) for node, ups in deps.items()}
    dependants: dict[str, list[str]] = {node: [] for node in deps}
    for node, ups in deps.items():
        for up in ups:
            dependants[up].append(node)
    depth = dict.fromkeys(deps, 1)
    ready = [node for node, count in waiting.items() if count == 0]
    while ready:
        node = ready.pop()
        for child in dependants[node]:
            depth[child] = max(depth[child], depth[node] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    for node, count in waiting.items():
        if count:
            problems.add(f"nodes.{node}.inputs", "is on a cycle: a node may not depend on itself")
    for node, children in dependants.items():
        if len(children) > MAX_FAN_OUT:
            problems.add(f"nodes.{node}", f"feeds {len(children)} nodes, at most {MAX_FAN_OUT}")
    deepest = max(depth.values())
    if not any(waiting.values()) and deepest > MAX_DEPTH:
        problems.add("nodes", f"a chain of {deepest} nodes, at most {MAX_DEPTH}")


def order(graph: Mapping[str, Any]) -> list[str]:
    """The nodes of an acyclic graph, each after everything it depends on."""
    deps = dependencies(graph)
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(deps):
        for node, ups in deps.items():
            if node not in placed and all(up in placed for up in ups):
                done.append(node)
                placed.add(node)
    return done


Quote = Callable[[GenerationRequest, Mapping[str, ImageInput]], Normalised]


def plan(
    graph: Mapping[str, Any],
    catalogue: Catalogue,
    quote: Quote,
    values: Mapping[str, Any],
    images: Mapping[str, ImageInput],
) -> dict[str, NodePlan]:
    """Each node's request and output size, given the run's input ``values`` (defaults
    applied) and resolved image inputs. Raises :class:`InvalidGraph` with every problem."""
    problems = _Problems()
    made: dict[str, NodePlan] = {}
    specs = {node["id"]: node for node in graph["nodes"]}
    for node_id in order(graph):
        node = specs[node_id]
        where = f"nodes.{node_id}"
        ports: dict[str, ImageInput] = {}
        for port, binding in (node.get("inputs") or {}).items():
            kind, name = binding_source(binding)
            upstream = made.get(name) if kind == "nodes" else None
            if upstream is not None and upstream.size is not None:
                ports[port] = _stand_in(*upstream.size)
            elif kind == "inputs" and PORTS[node["op"]][port][0] == "image":
                ports[port] = images.get(name, _STAND_IN)
        if len(ports) < sum(1 for p in (node.get("inputs") or {}) if _is_image_port(node, p)):
            continue  # an upstream node has a problem, reported there
        try:
            made[node_id] = plan_node(node, values, ports, catalogue, quote)
        except InvalidGraph as invalid:
            for at, message in invalid.problems:
                problems.add(f"{where}.{at}", message)
        except InvalidRequest as refused:
            problems.add(f"{where}.{refused.field}", refused.message)
        except Invalid as refused:
            problems.add(where, str(refused))
    if problems.found:
        raise InvalidGraph(problems.found)
    return made


def _stand_in_value(kind: str) -> Any:
    return {"text": "stand-in", "integer": 1, "number": 1.0, "boolean": False}[kind]


def _stand_in(width: int, height: int) -> ImageInput:
    return ImageInput("stand-in", "stand-in", width, height, "image/png", "0" * 64)


def _is_image_port(node: Mapping[str, Any], port: str) -> bool:
    return PORTS[node["op"]][port][0] == "image"


def bound_params(node: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The node's params with its value ports' bound input values in place."""
    params = dict(node.get("params") or {})
    for port, binding in (node.get("inputs") or {}).items():
        kind, name = binding_source(binding)
        if kind == "inputs" and not _is_image_port(node, port):
            params[port] = values.get(name, _stand_in_value(PORTS[node["op"]][port][0]))
    return params


def plan_node(
    node: Mapping[str, Any],
    values: Mapping[str, Any],
    images: Mapping[str, ImageInput],
    catalogue: Catalogue,
    quote: Quote,
) -> NodePlan:
    """One node's request, given the run's input ``values`` and its image ports' inputs (the
    run's images and upstream outputs; stand-ins of the right size while validating)."""
    node_id, op = str(node["id"]), str(node["op"])
    params = bound_params(node, values)
    if op in LOCAL_OPS:
        refused = check_params(op, params)
        if refused:
            raise InvalidGraph(refused)
        sizes = {port: (image.width, image.height) for port, image in images.items()}
        return NodePlan(node_id, op, params, output_size(op, params, sizes))
    model = params.pop("model", None)
    if not isinstance(model, str):
        raise InvalidGraph([("params.model", f"a {PROVIDER_OPS[op]} model of the catalogue")])
    spec = _model(catalogue, op, model)
    prompt = params.pop("prompt", "")
    negative = params.pop("negative_prompt", None)
    output_format = params.pop("output_format", "png")
    if not isinstance(prompt, str) or (not prompt.strip() and op not in _NO_PROMPT):
        raise InvalidGraph([("params.prompt", "give a prompt or bind inputs.prompt")])
    for port, image in images.items():
        params[port] = image.reference
    request = GenerationRequest(
        model=spec.key,
        prompt=prompt,
        negative_prompt=negative if isinstance(negative, str) else None,
        params=params,
        output_format=str(output_format),
    )
    normalised = quote(request, dict(images))
    size = None
    if spec.kind != "video":
        size = (int(normalised.params["width"]), int(normalised.params["height"]))
    return NodePlan(node_id, op, params, size, request, normalised)


def _model(catalogue: Catalogue, op: str, key: str) -> ModelSpec:
    try:
        spec = catalogue.get(key)
    except UnknownModel:
        raise InvalidGraph([("params.model", f"no model {key!r} in the catalogue")]) from None
    if spec.kind != PROVIDER_OPS[op]:
        raise InvalidGraph(
            [("params.model", f"{key} is a {spec.kind} model; {op} needs a {PROVIDER_OPS[op]} one")]
        )
    return spec


def run_values(graph: Mapping[str, Any], given: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A run's input values, defaults applied, and its image references by input; refuses an
    unknown, missing or mistyped input with :class:`InvalidGraph` (fields ``inputs.NAME``)."""
    problems = _Problems()
    declared: Mapping[str, Any] = graph.get("inputs") or {}
    if not isinstance(given, Mapping):
        raise InvalidGraph([("inputs", "must be an object of input values")])
    nuls = nul_paths(given, "inputs")
    if nuls:
        raise InvalidGraph([(path, NUL_MESSAGE) for path in nuls])
    for name in sorted(set(given) - set(declared)):
        problems.add(f"inputs.{name}", "this workflow has no such input")
    values: dict[str, Any] = {}
    images: dict[str, str] = {}
    for name, spec in declared.items():
        if name in given:
            value = given[name]
        elif "default" in spec:
            value = spec["default"]
        else:
            problems.add(f"inputs.{name}", f"required ({spec['type']})")
            continue
        kind = _value_type(value)
        if spec["type"] == "image":
            if kind != "text":
                problems.add(f"inputs.{name}", '"upload:<id>" or "generation:<id>"')
            else:
                images[name] = value
            continue
        if kind is None or not _accepts(spec["type"], kind):
            problems.add(f"inputs.{name}", f"must be a {spec['type']}")
            continue
        values[name] = value
    if problems.found:
        raise InvalidGraph(problems.found)
    return values, images
