"""torch.jit.script and our modules."""


class NotScriptable:
    """Mixed into our modules: torch.jit.script cannot compile their forward (it calls our Python
    op wrappers), and its own error points at some Python construct deep inside them. Before
    compiling, it calls __prepare_scriptable__ on every module of the model; ours says what
    works instead."""

    def __prepare_scriptable__(self):
        raise NotImplementedError(
            f"{type(self).__name__} (oxkernels.nn): torch.jit.script is not supported; torch.jit.trace, "
            "torch.export and torch.compile record our custom ops (torch.ops.oxkernels.*) and work")
