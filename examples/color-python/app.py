"""The seed's blue-green color logic as a runner stage, written in Python.

Reads `<service>/color` from the registry, answers the next color as the
output `next` (blue when never deployed, then alternating), and with
`--config commit=true` writes it back with compare-and-swap, so two deploys
racing each other cannot both win.

Build:  componentize-py -d wit -w stage componentize app -p examples/color-python -o color.wasm
Run:    runner exec --plugin color.wasm --service books-ms --allow-kv books-ms/ [--config commit=true]
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import kv, log, types

COLORS = ("blue", "green")
TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


def next_color(current: str) -> str:
    return "green" if current == "blue" else "blue"


class WitWorld(wit_world.WitWorld):
    def run(self, ctx: wit_world.Context) -> wit_world.Outcome:
        config = dict(ctx.config)
        if not ctx.service:
            raise Err(types.Error_InvalidConfig("no service given; pass --service NAME"))
        commit = config.get("commit", "false").lower()
        if commit not in TRUE + FALSE:
            raise Err(types.Error_InvalidConfig(f"setting `commit` must be true or false, got {commit!r}"))

        key = f"{ctx.service}/color"
        entry = kv.get(key)  # a denied key raises Err(types.Error_Denied) for us
        current = entry.value.decode() if entry else ""
        if current not in ("",) + COLORS:
            raise Err(types.Error_InvalidConfig(
                f"{key} holds {current!r}, expected blue or green; "
                f"fix it with `runner kv put {key} blue`"))

        chosen = next_color(current)
        outputs = [("current", current), ("next", chosen)]
        if commit in TRUE:
            expected = entry.modify_index if entry else 0
            if not kv.cas(key, chosen.encode(), expected):
                raise Err(types.Error_Failed(
                    f"{key} changed while choosing the next color (another deploy running?); run again"))
            log.write(log.Level.INFO, f"{key} = {chosen}")
            message = f"color of {ctx.service} is now {chosen} (was {current or 'unset'})"
        else:
            message = f"next color of {ctx.service} is {chosen} (current: {current or 'unset'})"
        return wit_world.Outcome(outputs=outputs, message=message)
