# gnuplot bench/lckv/plot.gp (from the repository root): bench/lckv/ppl_vs_kv.png
set terminal pngcairo size 900,560
set output 'bench/lckv/ppl_vs_kv.png'
set title 'val perplexity vs KV bytes per token (kvt-l shape, 40 val windows, CPU)'
set xlabel 'KV bytes per token (bf16)'
set ylabel 'perplexity'
set grid
set key off
set xrange [0:5800]
plot 'bench/lckv/ppl_vs_kv.dat' using 1:2:3 with yerrorbars pt 7 ps 1.5, \
     '' using 1:2:4 with labels offset 0,1.2 font ',9'
