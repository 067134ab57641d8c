"""Random valid Metaflow flows for property-based tests.

A flow is a sequence of blocks; a block is a single step, a static split (2-3 branches of
blocks, then a join step), a foreach (a body of blocks, then a join step) or a switch
(two branches of blocks, then a merge step), or, where the next step is a join (a branch of
a split, a foreach body, or the end), an *open* switch whose branches go straight into that
join with no merge step. Every step extends a deterministic `trace`
string, so a native run and a Dagster run of the same flow must produce equal artifacts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class _Gen:
    rng: random.Random
    max_steps: int
    max_depth: int
    steps: list[str] = field(default_factory=list)
    counter: int = 0

    def name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}{self.counter}"

    def add(self, name: str, body: str, nxt: str, join: bool = False) -> None:
        args = "self, inputs" if join else "self"
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
        kind = self.rng.choice(kinds)
        if kind == "open_switch":
            head = self.name("osw")
            a = self.blocks(depth + 1, follow, 1, into_join=True)
            b = self.blocks(depth + 1, follow, 1, into_join=True)
            self.add(
                head,
                f"        self.trace += '{head};'\n        self.choice = 'a' if len(self.trace) % 2 else 'b'\n",
                f"{{'a': self.{a}, 'b': self.{b}}}, condition='choice'",
            )
            return head
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
        if kind == "foreach":
            head, join = self.name("fe"), self.name("fjoin")
            width = self.rng.randint(1, 3)
            self.add(
                join,
                f"        self.trace = '[' + '|'.join(sorted(i.trace for i in inputs)) + ']' + '{join};'\n",
                f"self.{follow}",
                join=True,
            )
            body = self.blocks(depth + 1, join, 1, into_join=True)
            first = self.name("item")
            self.add(first, f"        self.trace += '{first}' + str(self.input) + ';'\n", f"self.{body}")
            self.add(
                head,
                f"        self.trace += '{head};'\n        self.items = list(range({width}))\n",
                f"self.{first}, foreach='items'",
            )
            return head
        head, merge = self.name("sw"), self.name("merge")
        self.add(merge, f"        self.trace += '{merge};'\n", f"self.{follow}")
        a = self.blocks(depth + 1, merge, 1)
        b = self.blocks(depth + 1, merge, 1)
        self.add(
            head,
            f"        self.trace += '{head};'\n        self.choice = 'a' if len(self.trace) % 2 else 'b'\n",
            f"{{'a': self.{a}, 'b': self.{b}}}, condition='choice'",
        )
        return head


def random_flow(seed: int, max_steps: int = 14, max_depth: int = 3) -> tuple[str, str]:
    """(class name, source) of a random valid flow."""
    g = _Gen(random.Random(seed), max_steps, max_depth)
    g.add("end", "        pass\n", "")
    g.steps[-1] = "    @step\n    def end(self):\n        pass\n"
    first = g.blocks(0, "end", g.rng.randint(1, 3), into_join=True)
    g.steps.append(f"    @step\n    def start(self):\n        self.trace = 'start;'\n        self.next(self.{first})\n")
    cls = f"Random{seed}Flow"
    body = "\n".join(reversed(g.steps))
    src = (
        "from metaflow import FlowSpec, step\n\n\n"
        f"class {cls}(FlowSpec):\n{body}\n\n"
        f'if __name__ == "__main__":\n    {cls}()\n'
    )
    return cls, src
