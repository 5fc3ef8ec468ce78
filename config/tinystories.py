# The default single-GPU recipe: a 17.9M-parameter GPT (6 layers, 4 heads, 256 wide, GPT-2 BPE)
# on TinyStories. Prepare the data first with `python prepare.py`.
# Each step sees 32 x 1024 x 4 = 131,072 tokens; 5000 steps are 655M tokens, about 1.4 passes
# over TinyStories' train split. docs/benchmarks.md has measured speeds.

out_dir = 'out/tinystories'
eval_interval = 500
eval_iters = 50
log_interval = 10

wandb_project = 'tinystories'
wandb_run_name = 'gpt-17.9m'

dataset = 'tinystories'
batch_size = 32
block_size = 1024
gradient_accumulation_steps = 4

n_layer = 6
n_head = 4
n_embd = 256
dropout = 0.0
bias = True  # GPT-2 classic: 17,867,008 parameters, as Hugging Face counts them

learning_rate = 1e-3  # small models take a higher rate than GPT-2's 6e-4
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
