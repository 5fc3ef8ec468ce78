# nanoGPT's shakespeare_char recipe with the modern switches that paid off on it (docs/recipes.md):
# rotary positions, QK-norm and the Muon optimizer for the blocks' matrices. Everything else, and
# every key you pass, is config/shakespeare_char.py's.
#   python train.py config/shakespeare_char_modern.py
# The CPU variant of the README, with a schedule 5x shorter, beats nanoGPT's 2000-step val loss:
#   python train.py config/shakespeare_char_modern.py --device=cpu --compile=False --eval_iters=20 \
#     --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0 \
#     --max_iters=400 --lr_decay_iters=400
# 39 to 44 s on a 2-core CPU for val 1.836 to 1.851, where nanoGPT needs 2000 steps and about 115 s for
# 1.87 to 1.90 (docs/recipes.md).
import os

exec(open(os.path.join(os.path.dirname(__file__), "shakespeare_char.py")).read())

out_dir = 'out/shakespeare_char_modern'
rope = True  # rotary position embeddings: 1.729 vs 1.762 at 2000 steps, alone
qk_norm = True  # RMS-normalized queries and keys: steadier attention logits under Muon's large steps
optimizer = 'muon'  # Muon for the hidden matrices, AdamW (learning_rate) for embeddings and gains: 1.613 vs 1.762, alone
muon_lr = 0.02
warmup_iters = 50  # Muon needs less warm-up; it matters on short schedules like the one above
