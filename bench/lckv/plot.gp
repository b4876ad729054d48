# gnuplot bench/lckv/plot.gp (from the repository root, after summarize2.py): bench/lckv/ppl_vs_kv.png
set terminal pngcairo size 900,560
set output 'bench/lckv/ppl_vs_kv.png'
set title "val perplexity vs KV bytes per token (kvt-l shape, 100M tokens each)\nLCKV and standard: 200 windows, H200; MiniCache on the standard model: CPU, windows in the README"
set xlabel 'KV bytes per token (bf16)'
set ylabel 'perplexity'
set grid
set key off
set xrange [0:5800]
set yrange [0:35]
plot 'bench/lckv/ppl_vs_kv.dat' using 1:2:3:4 with yerrorbars pt 7 ps 1.3, \
     '' using 1:2:5 with labels offset 0,1.1 font ',9'
