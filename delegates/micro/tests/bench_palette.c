/* Host decode speed of the palette decoder (tswap_palette_decode): reads an encoded entry from a
 * file (written by benchmarks/compression.py), decodes it REPEATS times and prints
 * "<decoded bytes> <seconds>" for the fastest of 5 rounds. Usage: bench_palette ENTRY REPEATS */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tswap_micro.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char** argv) {
  static uint8_t blob[1 << 22];
  FILE* f;
  size_t size;
  tswap_palette p;
  int8_t *tables, *out;
  long repeats, r, round;
  double best = 1e30;
  if (argc < 3 || (f = fopen(argv[1], "rb")) == NULL) return 2;
  size = fread(blob, 1, sizeof(blob), f);
  fclose(f);
  repeats = atol(argv[2]);
  if (size < TSWAP_PALETTE_HEADER_BYTES) return 3;
  p.count = (uint32_t)blob[8] | ((uint32_t)blob[9] << 8) | ((uint32_t)blob[10] << 16) | ((uint32_t)blob[11] << 24);
  if (tswap_palette_parse(blob, (uint32_t)size, p.count, &p) != TSWAP_OK) return 4;
  tables = malloc(p.table_bytes);
  out = malloc(p.count);
  if (tables == NULL || out == NULL) return 5;
  for (round = 0; round < 5; ++round) {
    double start = now(), took;
    for (r = 0; r < repeats; ++r) {
      if (tswap_palette_decode(&p, blob, tables, out) != TSWAP_OK) return 6;
    }
    took = (now() - start) / (double)repeats;
    if (took < best) best = took;
  }
  printf("%u %.9f\n", (unsigned)p.count, best);
  free(tables);
  free(out);
  return 0;
}
