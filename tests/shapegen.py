"""Random valid Metaflow flows for property-based tests.

A flow is a sequence of blocks; a block is a single step, a static split (2-3 branches of
blocks, then a join step), a foreach (a body of blocks, then a join step) or a switch
(two branches of blocks, then a merge step), or, where the next step is a join (a branch of
a split, a foreach body, or the end), an *open* switch whose branches go straight into that
join with no merge step. Every step extends a deterministic `trace`
string, so a native run and a Dagster run of the same flow must produce equal artifacts.

Two more families, off by default so the seeds of the plain family keep their flows:
`loops=True` adds loops (a recursive switch iterating 1-3 times, whose two exits go through
different steps to a merge step, or straight into a join), at any foreach depth; and
`replace_body=True` replaces the body of one step that always runs with a decorator that
never calls self.next(), which Metaflow's runtime refuses after the task: both runs fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# what a block ends in, by the prefix of its first step's name: a split in its join, a
# foreach in its join, a switch or a loop in its merge (other blocks go straight on)
_BRANCH_END = {"split": "join", "fe": "foreach", "sw": "merge", "lp": "merge"}


@dataclass
class _Gen:
    rng: random.Random
    max_steps: int
    max_depth: int
    loops: bool = False  # also loops (recursive switches), whose exits rejoin
    steps: list[str] = field(default_factory=list)
    counter: int = 0
    foreach_level: int = 0  # foreach bodies enclosing the step being added
    conditional: int = 0  # switch/loop branches enclosing it (it may not run)
    features: set[str] = field(default_factory=set)
    # first body steps of foreaches whose body is one plain step (may run in chunks)
    chunk_items: set[str] = field(default_factory=set)
    # the joins of those foreaches -> the foreach's own level (0: top level)
    chunk_joins: dict[str, int] = field(default_factory=dict)
    # top-level foreaches on a switch's (or loop's) branch (`foreach_on_a_branch`)
    branch_foreaches: set[str] = field(default_factory=set)
    # step -> (foreach level, conditional depth, index in `steps`)
    placed: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}{self.counter}"

    def add(self, name: str, body: str, nxt: str, join: bool = False) -> None:
        args = "self, inputs" if join else "self"
        self.placed[name] = (self.foreach_level, self.conditional, len(self.steps))
        self.steps.append(f"    @step\n    def {name}({args}):\n{body}        self.next({nxt})\n")

    def blocks(self, depth: int, follow: str, count: int | None = None, into_join: bool = False) -> str:
        """Emit `count` blocks that end by going to `follow`; return the first step's name.
        `into_join`: `follow` is a join (or the end), so the last block may be an open switch."""
        n = count if count is not None else self.rng.randint(1, 2)
        entry = follow
        for i in range(n):
            entry = self.block(depth, entry, into_join and i == 0)
        return entry

    def block(self, depth: int, follow: str, into_join: bool = False) -> str:
        budget_left = self.max_steps - len(self.steps)
        kinds = ["step"]
        if budget_left > 4 and depth < self.max_depth:
            kinds += ["split", "foreach", "switch"]
            if into_join:
                kinds.append("open_switch")
            if self.loops:
                kinds += ["loop", "open_loop"] if into_join else ["loop"]
        kind = self.rng.choice(kinds)
        if kind in ("open_switch", "switch"):
            return self.switch(depth, follow, open_=kind == "open_switch")
        if kind in ("open_loop", "loop"):
            return self.loop(depth, follow, open_=kind == "open_loop")
        if kind == "step":
            name = self.name("s")
            self.add(name, f"        self.trace += '{name};'\n", f"self.{follow}")
            return name
        if kind == "split":
            head, join = self.name("split"), self.name("join")
            self.add(
                join,
                f"        self.trace = '(' + '|'.join(sorted(i.trace for i in inputs)) + ')' + '{join};'\n",
                f"self.{follow}",
                join=True,
            )
            branches = [self.blocks(depth + 1, join, 1, into_join=True) for _ in range(self.rng.randint(2, 3))]
            self.add(head, f"        self.trace += '{head};'\n", ", ".join(f"self.{b}" for b in branches))
            return head
        return self.foreach(depth, follow)

    def foreach(self, depth: int, follow: str) -> str:
        head, join = self.name("fe"), self.name("fjoin")
        width = self.rng.randint(1, 3)
        self.add(
            join,
            f"        self.trace = '[' + '|'.join(sorted(i.trace for i in inputs)) + ']' + '{join};'\n",
            f"self.{follow}",
            join=True,
        )
        self.foreach_level += 1
        body = self.blocks(depth + 1, join, 1, into_join=True)
        first = self.name("item")
        self.add(first, f"        self.trace += '{first}' + str(self.input) + ';'\n", f"self.{body}")
        self.foreach_level -= 1
        if self.conditional and not self.foreach_level:
            # a top-level foreach on a switch's branch: the switch marks the branch not taken
            # (Dagster's re-execution from failure after a skipped fan-out op: wiring.py)
            self.features.add("foreach_on_a_branch")
            self.branch_foreaches.add(head)
        if body.startswith("s") and body[1:].isdigit():
            # item -> one plain step -> join: a chain (a nested one: its fanout op chunks)
            self.features.add("chunked_foreach" + ("_nested" if self.foreach_level else ""))
            self.chunk_items.add(first)
            self.chunk_joins[join] = self.foreach_level
        self.add(
            head,
            f"        self.trace += '{head};'\n        self.items = list(range({width}))\n",
            f"self.{first}, foreach='items'",
        )
        return head

    def switch(self, depth: int, follow: str, open_: bool) -> str:
        """Two branches meeting in a merge step, or (`open_`) going straight into `follow`."""
        head = self.name("osw" if open_ else "sw")
        target = follow
        if not open_:
            target = self.name("merge")
            self.add(target, f"        self.trace += '{target};'\n", f"self.{follow}")
        self.conditional += 1
        a = self.blocks(depth + 1, target, 1, into_join=open_)
        b = self.blocks(depth + 1, target, 1, into_join=open_)
        self.conditional -= 1
        self._note_open_branches(open_, follow, (a, b))
        self.add(
            head,
            f"        self.trace += '{head};'\n        self.choice = 'a' if len(self.trace) % 2 else 'b'\n",
            f"{{'a': self.{a}, 'b': self.{b}}}, condition='choice'",
        )
        return head

    def _note_open_branches(self, open_: bool, follow: str, branches: tuple[str, ...]) -> None:
        """A top-level open switch (or loop) into a split's join whose every branch is a split,
        foreach, switch or loop: each ends in a join or merge that Dagster skips when its
        branch is not taken, and the split's join must still run on what was taken (with
        one plain-step branch, its value alone made that join a fan-in list)."""
        if not open_ or self.foreach_level or not follow.startswith("join"):
            return
        ends = [_BRANCH_END.get(entry.rstrip("0123456789")) for entry in branches]
        if all(ends):
            self.features.update(f"open_branch_through_{end}" for end in ends)

    def loop(self, depth: int, follow: str, open_: bool) -> str:
        """A recursive switch (1-3 iterations, from the trace) whose two exits go through
        different steps to a merge step, or (`open_`) straight into the join `follow`."""
        head = self.name("olp" if open_ else "lp")
        target = follow
        if not open_:
            target = self.name("lmerge")
            self.add(target, f"        self.trace += '{target};'\n", f"self.{follow}")
        self.conditional += 1
        a = self.blocks(depth + 1, target, 1, into_join=open_)
        b = self.blocks(depth + 1, target, 1, into_join=open_)
        self.conditional -= 1
        self._note_open_branches(open_, follow, (a, b))
        level = f"_in_foreach{self.foreach_level}" if self.foreach_level else ""
        self.features.add(("open_loop" if open_ else "loop") + level)
        self.add(
            head,
            f"        self.trace += '{head};'\n"
            f"        self.k_{head} = getattr(self, 'k_{head}', 0) + 1\n"
            f"        self.route = ('again' if self.k_{head} < 1 + len(self.trace) % 3\n"
            f"                      else 'a' if len(self.trace) % 2 else 'b')\n",
            f"{{'again': self.{head}, 'a': self.{a}, 'b': self.{b}}}, condition='route'",
        )
        return head


@dataclass(frozen=True)
class GeneratedFlow:
    """A generated flow and what it contains (to pick seeds that cover a family)."""

    cls: str
    source: str
    features: frozenset[str]  # "loop", "open_loop", "loop_in_foreach<level>", ...
    replaced: str | None = None  # the step whose body a decorator replaced
    replaced_level: int = 0  # foreach bodies enclosing it
    chunk_items: frozenset[str] = frozenset()  # first steps of bodies that may run in chunks
    failing: str | None = None  # the step that fails while the `fail_marker` file exists
    failing_level: int | None = None  # the failing join's foreach level, if it joins chunks
    branch_foreaches: frozenset[str] = frozenset()  # top-level foreaches on a branch


# stands in for a step's body, as a user decorator may: self.next() is never called
REPLACE_BODY = """
def replace_body(func):
    @functools.wraps(func)
    def body(self, *args):
        self.trace = 'replaced'

    return body
"""


def generate(
    seed: int,
    max_steps: int = 14,
    max_depth: int = 3,
    *,
    loops: bool = False,
    replace_body: bool = False,
    fail_marker: str | None = None,
) -> GeneratedFlow:
    """A random valid flow. `loops`: blocks may also be loops. `replace_body`: one step that
    always runs (on no conditional branch; never `end`) has its body replaced by a decorator,
    so it never calls self.next(): Metaflow's runtime fails the run after its task.
    `fail_marker`: one step that always runs (the join of a foreach that may run in chunks,
    the deepest such, when there is one: its body's tasks all succeeded and must be reused)
    raises while that file exists (resume and re-execution)."""
    g = _Gen(random.Random(seed), max_steps, max_depth, loops=loops)
    g.add("end", "        pass\n", "")
    g.steps[-1] = "    @step\n    def end(self):\n        pass\n"
    first = g.blocks(0, "end", g.rng.randint(1, 3), into_join=True)
    g.add("start", "        self.trace = 'start;'\n", f"self.{first}")
    replaced = None
    if replace_body:
        always = sorted(n for n, (_lvl, cond, _i) in g.placed.items() if cond == 0 and n != "end")
        replaced = g.rng.choice(always)
        i = g.placed[replaced][2]
        g.steps[i] = g.steps[i].replace("    @step\n", "    @step\n    @replace_body\n", 1)
    failing = None
    if fail_marker:
        always = sorted(n for n, (_lvl, cond, _i) in g.placed.items() if cond == 0 and n not in ("start", "end"))
        joins = sorted((-g.chunk_joins[j], j) for j in always if j in g.chunk_joins)
        failing = joins[0][1] if joins else g.rng.choice(always)
        i = g.placed[failing][2]
        raise_line = f"        if os.path.exists({fail_marker!r}):\n            raise ValueError('{failing} fails')\n"
        g.steps[i] = g.steps[i].replace("(self):\n", "(self):\n" + raise_line, 1).replace(
            "(self, inputs):\n", "(self, inputs):\n" + raise_line, 1
        )
    cls = f"Random{seed}Flow"
    body = "\n".join(reversed(g.steps))
    head = "from metaflow import FlowSpec, step\n\n\n"
    if replaced:
        head = "import functools\n\n" + head + REPLACE_BODY.lstrip() + "\n\n"
    if failing:
        head = "import os\n\n" + head
    src = head + f"class {cls}(FlowSpec):\n{body}\n\n" + f'if __name__ == "__main__":\n    {cls}()\n'
    level = g.placed[replaced][0] if replaced else 0
    failing_level = g.chunk_joins.get(failing) if failing else None
    return GeneratedFlow(
        cls, src, frozenset(g.features), replaced, level, frozenset(g.chunk_items), failing, failing_level,
        frozenset(g.branch_foreaches),
    )


def random_flow(seed: int, max_steps: int = 14, max_depth: int = 3, *, loops: bool = False) -> tuple[str, str]:
    """(class name, source) of a random valid flow."""
    flow = generate(seed, max_steps, max_depth, loops=loops)
    return flow.cls, flow.source
