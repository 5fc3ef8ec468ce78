# GPT-2 124M (12 layers, 12 heads, 768 wide, 1024 context) on TinyStories.
# Prepare the data first with `python prepare.py`.
# Each step is 16 x 1024 x 32 = 524,288 tokens (about 0.5M, GPT-2's batch) through gradient
# accumulation; 3000 steps are 1.57B tokens. AdamW with weight decay, cosine schedule, clipping;
# torch.compile, FlashAttention (through scaled_dot_product_attention) and TF32 are on by default on CUDA.
# A published run of this recipe reached val loss 1.24 after 3 h 45 min on one A100.
# On several GPUs: torchrun --standalone --nproc_per_node=8 train.py config/tinystories_124m.py

out_dir = 'out/tinystories_124m'
eval_interval = 250
eval_iters = 50
log_interval = 10

wandb_project = 'tinystories'
wandb_run_name = 'gpt2-124m'

dataset = 'tinystories'
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 32  # 16 x 1024 x 32 = 524,288 tokens per step (over all processes)

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True

learning_rate = 6e-4
max_iters = 3000
lr_decay_iters = 3000
min_lr = 6e-5
warmup_iters = 100
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

compile = True
dtype = 'auto'  # bfloat16 on GPUs that have it
