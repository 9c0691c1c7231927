"""Mixed CPU/CUDA params into the CUDA op, by one of three paths; prints the exception or dies."""
import sys
import torch
sys.path.insert(0, "tests")
from adadelta_fused import _extension
from adadelta_fused.contract import op_arguments, StepScalars
path = sys.argv[1]
cuda = [torch.randn(5, device="cuda") for _ in range(4)]
lists = [[cuda[0], torch.randn(4)], [cuda[1], torch.randn(4, device="cuda")],
         [cuda[2].abs(), torch.rand(4, device="cuda")], [cuda[3].abs(), torch.rand(4, device="cuda")]]
args = op_arguments(*lists, None, StepScalars(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0))
print(path, "starting", flush=True)
try:
    if path == "validator":
        _extension.check_op_args(*args, "cuda")
    elif path == "boxed":
        _extension.op()(*args)
    elif path == "unboxed":
        print("unboxed returned", _extension.call_unboxed("step", *args))
    elif path == "same-device-cpu-first":
        lists[0] = [torch.randn(4), cuda[0]]
        args = op_arguments(*lists, None, StepScalars(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0))
        _extension.op()(*args)
    print(path, "raised nothing")
except Exception as error:
    print(path, "raised", type(error).__name__, str(error).splitlines()[0])
