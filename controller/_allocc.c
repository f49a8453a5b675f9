/*
 * Compiled core of controller/allocation.py: admission and max-min fair water-filling.
 *
 * The same algorithm as the Python reference implementation in allocation.py (which stays the
 * fallback when this library is not built, and the reference the tests compare against):
 *   1. admission in the order given (Python sorts by class, running first, urgency): a demand is
 *      admitted when need * w fits every constraint it loads; its minimum is then taken;
 *   2. per priority class, highest first, all admitted members rise along a common level
 *      x = clamp(L, lo, hi); a constraint that runs out at L freezes its members there.
 * Constraint levels live in a heap seeded with lower bounds and are computed exactly only when they
 * reach its top; a frozen member below its demand marks its other constraints dirty.
 *
 * Plain C, no Python API: loaded with ctypes. Every array is owned by the caller.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EPS 1e-9

typedef struct {
    double level;
    int key;
    int exact;
} Entry;

static int entry_less(const Entry *a, const Entry *b) {
    if (a->level != b->level) return a->level < b->level;
    if (a->key != b->key) return a->key < b->key;
    return a->exact < b->exact;
}

static void heap_push(Entry *heap, int *size, Entry e) {
    int i = (*size)++;
    heap[i] = e;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!entry_less(&heap[i], &heap[parent])) break;
        Entry t = heap[i]; heap[i] = heap[parent]; heap[parent] = t;
        i = parent;
    }
}

static Entry heap_pop(Entry *heap, int *size) {
    Entry top = heap[0];
    heap[0] = heap[--(*size)];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *size && entry_less(&heap[l], &heap[m])) m = l;
        if (r < *size && entry_less(&heap[r], &heap[m])) m = r;
        if (m == i) break;
        Entry t = heap[i]; heap[i] = heap[m]; heap[m] = t;
        i = m;
    }
    return top;
}

typedef struct {
    double position;
    double delta;
} Event;

static int event_cmp(const void *a, const void *b) {
    const Event *x = a, *y = b;
    if (x->position < y->position) return -1;
    if (x->position > y->position) return 1;
    if (x->delta < y->delta) return -1;
    if (x->delta > y->delta) return 1;
    return 0;
}

/* Highest L at which sum w * (clamp(L, lo, hi) - lo) over the active members stays within rem. */
static double level_of(int start, int end, const int *mem, const double *memw, const char *active,
                       const double *lo, const double *hi, double rem, Event *events) {
    int count = 0;
    double total = 0.0;
    if (rem < 0.0) rem = 0.0;
    for (int j = start; j < end; j++) {
        int i = mem[j];
        if (!active[i]) continue;
        events[count].position = lo[i]; events[count].delta = memw[j]; count++;
        events[count].position = hi[i]; events[count].delta = -memw[j]; count++;
        total += memw[j] * (hi[i] - lo[i]);
    }
    if (total <= rem + EPS) return INFINITY;
    qsort(events, count, sizeof(Event), event_cmp);
    double level = events[0].position, used = 0.0, slope = 0.0;
    for (int e = 0; e < count; e++) {
        if (events[e].position > level) {
            double grown = used + slope * (events[e].position - level);
            if (grown >= rem) return level + (rem - used) / slope;
            used = grown;
            level = events[e].position;
        }
        slope += events[e].delta;
    }
    return level;
}

/*
 * n demands in admission order; kptr/kidx/kw: the constraint keys and weights of each demand
 * (CSR); rem[nkeys] is consumed in place; x[n] receives the currents (0 = not admitted).
 * Returns 0, or -1 when memory runs out (the caller then uses the Python implementation).
 */
int plaza_allocate(int n, const double *lo_in, const double *hi_in, const double *need,
                   const int *rank, const int *kptr, const int *kidx, const double *kw,
                   int nkeys, double *rem, double *x) {
    int nnz = kptr[n];
    char *admitted = calloc(n > 0 ? n : 1, 1);
    char *active = calloc(n > 0 ? n : 1, 1);
    double *lo = malloc(sizeof(double) * (n > 0 ? n : 1));
    double *hi = malloc(sizeof(double) * (n > 0 ? n : 1));
    int *count = calloc(nkeys + 1, sizeof(int));
    int *kstart = calloc(nkeys + 1, sizeof(int));
    int *mem = malloc(sizeof(int) * (nnz > 0 ? nnz : 1));
    double *memw = malloc(sizeof(double) * (nnz > 0 ? nnz : 1));
    double *totals = malloc(sizeof(double) * (nkeys > 0 ? nkeys : 1));
    double *weights = malloc(sizeof(double) * (nkeys > 0 ? nkeys : 1));
    char *dirty = calloc(nkeys > 0 ? nkeys : 1, 1);
    Entry *heap = malloc(sizeof(Entry) * (2 * (size_t)nkeys + 1));
    Event *events = malloc(sizeof(Event) * (2 * (size_t)(n > 0 ? n : 1)));
    int *ranks = malloc(sizeof(int) * (n > 0 ? n : 1));
    int status = 0;
    if (!admitted || !active || !lo || !hi || !count || !kstart || !mem || !memw || !totals ||
        !weights || !dirty || !heap || !events || !ranks) {
        status = -1;
        goto done;
    }

    /* 1. Admission, in the order given. */
    for (int i = 0; i < n; i++) {
        x[i] = 0.0;
        lo[i] = lo_in[i];
        hi[i] = hi_in[i] > lo_in[i] ? hi_in[i] : lo_in[i];
        if (hi_in[i] < lo_in[i] - EPS || lo_in[i] <= 0.0) continue;
        int fits = 1;
        for (int j = kptr[i]; j < kptr[i + 1]; j++) {
            if (rem[kidx[j]] < need[i] * kw[j]) { fits = 0; break; }
        }
        if (!fits) continue;
        for (int j = kptr[i]; j < kptr[i + 1]; j++) rem[kidx[j]] -= lo[i] * kw[j];
        admitted[i] = 1;
        x[i] = lo[i];
    }

    /* Distinct ranks of admitted demands, highest first. */
    int nranks = 0;
    for (int i = 0; i < n; i++) {
        if (!admitted[i]) continue;
        int seen = 0;
        for (int r = 0; r < nranks; r++) if (ranks[r] == rank[i]) { seen = 1; break; }
        if (!seen) ranks[nranks++] = rank[i];
    }
    for (int a = 1; a < nranks; a++) {
        int v = ranks[a], b = a - 1;
        while (b >= 0 && ranks[b] < v) { ranks[b + 1] = ranks[b]; b--; }
        ranks[b + 1] = v;
    }

    /* 2. Water-filling per class. */
    for (int r = 0; r < nranks; r++) {
        int cls = ranks[r];
        double lo_min = INFINITY;
        memset(count, 0, sizeof(int) * (nkeys + 1));
        for (int k = 0; k < nkeys; k++) { totals[k] = 0.0; weights[k] = 0.0; dirty[k] = 0; }
        for (int i = 0; i < n; i++) {
            active[i] = 0;
            if (!admitted[i] || rank[i] != cls) continue;
            if (lo[i] < lo_min) lo_min = lo[i];
            if (hi[i] <= lo[i] + EPS) continue;
            active[i] = 1;
            for (int j = kptr[i]; j < kptr[i + 1]; j++) {
                int k = kidx[j];
                count[k + 1]++;
                totals[k] += kw[j] * (hi[i] - lo[i]);
                weights[k] += kw[j];
            }
        }
        for (int k = 0; k < nkeys; k++) count[k + 1] += count[k];
        memcpy(kstart, count, sizeof(int) * (nkeys + 1));
        for (int i = 0; i < n; i++) {
            if (!active[i]) continue;
            for (int j = kptr[i]; j < kptr[i + 1]; j++) {
                int k = kidx[j];
                mem[kstart[k]] = i;
                memw[kstart[k]] = kw[j];
                kstart[k]++;
            }
        }
        /* count[k] .. count[k + 1] now spans key k's members. */
        int hsize = 0;
        for (int k = 0; k < nkeys; k++) {
            if (weights[k] > 0.0 && totals[k] > rem[k] + EPS) {
                Entry e = {lo_min + (rem[k] > 0.0 ? rem[k] : 0.0) / weights[k], k, 0};
                heap_push(heap, &hsize, e);
            }
        }
        while (hsize > 0) {
            Entry top = heap_pop(heap, &hsize);
            int k = top.key;
            if (totals[k] <= rem[k] + EPS) continue;
            if (!top.exact || dirty[k]) {
                dirty[k] = 0;
                Entry e = {level_of(count[k], count[k + 1], mem, memw, active, lo, hi, rem[k], events), k, 1};
                heap_push(heap, &hsize, e);
                continue;
            }
            for (int j = count[k]; j < count[k + 1]; j++) {
                int i = mem[j];
                if (!active[i]) continue;
                double value = top.level < lo[i] ? lo[i] : top.level;
                if (value > hi[i]) value = hi[i];
                x[i] = value;
                active[i] = 0;
                double extra = value - lo[i], span = hi[i] - lo[i];
                int below = value < hi[i] - EPS;
                for (int q = kptr[i]; q < kptr[i + 1]; q++) {
                    rem[kidx[q]] -= kw[q] * extra;
                    totals[kidx[q]] -= kw[q] * span;
                    if (below) dirty[kidx[q]] = 1;
                }
            }
        }
        for (int i = 0; i < n; i++) {
            if (!active[i]) continue;
            x[i] = hi[i];
            for (int q = kptr[i]; q < kptr[i + 1]; q++) rem[kidx[q]] -= kw[q] * (hi[i] - lo[i]);
            active[i] = 0;
        }
    }

done:
    free(admitted); free(active); free(lo); free(hi); free(count); free(kstart); free(mem);
    free(memw); free(totals); free(weights); free(dirty); free(heap); free(events); free(ranks);
    return status;
}
