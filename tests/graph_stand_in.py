"""A stand-in for torch.cuda.make_graphed_callables, so the wiring of compile=capture is tested on the CPU."""

from __future__ import annotations


class StandInGraph:
    """Records each capture and, as torch's make_graphed_callables does for a module, sets the module's forward
    as an instance attribute: a "replay" that runs the class's forward and counts itself."""

    def __init__(self):
        self.samples: list[tuple] = []
        self.replays = 0

    def __call__(self, module, sample):
        self.samples.append(sample)

        def graphed(*args):
            self.replays += 1
            return type(module).forward(module, *args)

        module.forward = graphed
        return module
