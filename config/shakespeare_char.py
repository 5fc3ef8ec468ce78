# A character-level model of tiny Shakespeare: nanoGPT's "baby GPT" recipe, same keys and values.
# Prepare the data first:
#   python prepare.py --input assets/tinyshakespeare.txt --tokenizer char --name shakespeare_char
# nanoGPT reports val loss 1.4697 after about 3 minutes on one A100 with this recipe.
# On a CPU, the README's smaller variant (its quick start) reaches val 1.76 in 68 to 100 s on 2 cores
# (docs/benchmarks.md), where nanoGPT's own code reaches 1.89.

out_dir = 'out/shakespeare_char'
eval_interval = 250  # frequent, because this small data set overfits
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # ckpt.pt only when val improves (best.pt always holds the best)

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # 256 characters of context

# 6 layers, 6 heads, 384 wide: 10.7M parameters
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

# nanoGPT's 1e-3 at 384 wide. Adam's best rate grows as models get narrower (the muP rule for hidden
# layers: rate ~ 1/width), so narrower variants of this recipe, like the CPU one in the README, scale it:
# at 128 wide, 3e-3 reaches val 1.78 where 1e-3 reaches 1.90 (docs/benchmarks.md). --learning_rate wins.
learning_rate = lambda c: 1e-3 * 384 / c.n_embd
max_iters = 5000
lr_decay_iters = 5000  # usually max_iters
min_lr = lambda c: c.learning_rate / 10
beta2 = 0.99  # a bit higher, because each step sees few tokens
warmup_iters = 100
