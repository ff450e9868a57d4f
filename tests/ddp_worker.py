"Run by test_engine.py under torchrun: a 2-epoch fit in DDP on a synthetic CIFAR-100 folder."
import sys
import torch
from kd_nbs.data import load_cifar100
from kd_nbs.engine import fit, TrainConfig, CrossEntropy, init_distributed
from kd_nbs.models import VGG

data_root, out = sys.argv[1], sys.argv[2]
rank, world = init_distributed()
assert world == 2, world
torch.manual_seed(0)
model = VGG('vgg11', width=0.125)
if rank == 0: torch.save(model.state_dict(), f'{out}/init.pt')
data = load_cifar100(data_root, strict=False, verbose=False)
fit(model, CrossEntropy(), data, TrainConfig(epochs=2, batch_size=25, seed=0), out, 'ddp', progress=False)
torch.save(model.state_dict(), f'{out}/rank{rank}.pt')
torch.distributed.destroy_process_group()
