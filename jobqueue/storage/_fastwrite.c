/*
 * jobqueue.storage._fastwrite: one durable file write in one release of the
 * interpreter lock (see jobqueue/storage/jobwriter.py, which has a pure-Python
 * twin of everything here and uses this module only when it was built).
 *
 * Directory(dir_fd): one directory, whose fsyncs are shared by its writers.
 *
 *   write_file(name, target, data, file_mode, exchange, create, sync_dir)
 *     Opens `name` in the directory (creating it exclusively with `file_mode`
 *     if `create`), writes `data` from offset 0 and cuts the file to its
 *     length, fsyncs and closes it, then either exchanges `name` and `target`
 *     atomically (renameat2 RENAME_EXCHANGE, if `exchange`) or renames `name`
 *     over `target`; then, if `sync_dir`, waits for a directory fsync that
 *     began after the rename (see sync). Returns None when every step
 *     succeeded, else (step, errno) for the first step that failed: "open",
 *     "write", "fsync", "rename" or "fsync_dir". Nothing after a failed step
 *     is done; the caller decides how to undo.
 *
 *   sync()
 *     Returns once a directory fsync that began after the call began has
 *     succeeded; raises OSError if the one it waited for failed. Concurrent
 *     callers share fsyncs (group commit): one thread syncs for everyone
 *     who arrived before it started; the others wait on a condition.
 *
 *   exchange(name_a, name_b)
 *     Exchanges two names of the directory atomically; raises OSError.
 *
 *   overwrite(name, data)
 *     Opens the existing file `name` in the directory, writes `data` from
 *     offset 0 (nothing is cut: what follows stays), fdatasyncs and closes
 *     it. Returns None, or (step, errno) for the step that failed: "open",
 *     "write" or "fsync". (A start record: see startrecords.py.)
 *
 *   create_many(entries, file_mode)
 *     New files for a batch, made durable by one sync of the file system.
 *     `entries` is a list of (name, target, data, create) tuples. Each `name`
 *     is opened (created exclusively with `file_mode` if `create`), written
 *     from offset 0, cut to length and closed, without a sync; then one
 *     syncfs of the directory's file system; only then is each written
 *     `name` renamed to its `target`. Returns a list with, for each entry,
 *     None or (step, errno) for the step that failed it: "open", "write",
 *     "syncfs" (every written entry fails with it) or "rename". The caller
 *     syncs the directory afterwards (sync).
 *
 * The Directory does not own its descriptor: the caller keeps it open.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static int
exchange_names(int dir_fd, const char *name_a, const char *name_b)
{
#ifdef SYS_renameat2
    return (int)syscall(SYS_renameat2, dir_fd, name_a, dir_fd, name_b, RENAME_EXCHANGE);
#else
    errno = ENOSYS;
    return -1;
#endif
}

enum step { STEP_OK, STEP_OPEN, STEP_WRITE, STEP_FSYNC, STEP_RENAME, STEP_FSYNC_DIR, STEP_SYNCFS };
static const char *const step_names[] = {
    "", "open", "write", "fsync", "rename", "fsync_dir", "syncfs"};

/* A directory and the state of its shared fsyncs; `lock` guards the counters. */
typedef struct {
    PyObject_HEAD
    int dir_fd;
    pthread_mutex_t lock;
    pthread_cond_t done;
    unsigned long long requested; /* tickets handed out, one per sync asked for */
    unsigned long long synced;    /* every ticket up to this one is durable */
    unsigned long long failed;    /* tickets above `synced` up to this one failed */
    int failed_errno;
    int syncing;                  /* a thread is in fsync(dir_fd) for everyone */
} Directory;

/* Wait for a directory fsync that began after this call; 0 or an errno. No GIL. */
static int
shared_sync(Directory *dir)
{
    int result = 0;
    pthread_mutex_lock(&dir->lock);
    unsigned long long ticket = ++dir->requested;
    for (;;) {
        if (dir->synced >= ticket)
            break;
        if (dir->failed >= ticket) {
            result = dir->failed_errno;
            break;
        }
        if (dir->syncing) {
            pthread_cond_wait(&dir->done, &dir->lock);
            continue;
        }
        dir->syncing = 1;
        unsigned long long target = dir->requested;
        pthread_mutex_unlock(&dir->lock);
        int error = fsync(dir->dir_fd) < 0 ? errno : 0;
        pthread_mutex_lock(&dir->lock);
        dir->syncing = 0;
        if (error == 0) {
            if (target > dir->synced)
                dir->synced = target;
        } else {
            dir->failed = target;
            dir->failed_errno = error;
        }
        pthread_cond_broadcast(&dir->done);
    }
    pthread_mutex_unlock(&dir->lock);
    return result;
}

/* Write `size` bytes of `data` at offset 0 of the open `fd`; 0 or -1 (errno set). */
static int
write_all_at_start(int fd, const char *data, size_t size)
{
    size_t done = 0;
    while (done < size) {
        ssize_t written = pwrite(fd, data + done, size - done, (off_t)done);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)written;
    }
    return 0;
}

struct request {
    Directory *dir;
    const char *name;
    const char *target;
    const char *data;
    size_t size;
    int file_mode;
    int exchange;
    int create;
    int sync_dir;
};

/* Open `name` (created exclusively with `file_mode` if `create`), write `data` from
 * offset 0, cut the file to its length unless created, fdatasync it if `sync`, and
 * close it. Runs without the interpreter lock; STEP_OK, or the failed step (*error set). */
static enum step
write_whole_unlocked(int dir_fd, const char *name, const char *data, size_t size,
                     int file_mode, int create, int sync, int *error)
{
    int flags = O_WRONLY | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT | O_EXCL : 0);
    int fd = openat(dir_fd, name, flags, file_mode);
    if (fd < 0) {
        *error = errno;
        return STEP_OPEN;
    }
    enum step failed = STEP_OK;
    if (write_all_at_start(fd, data, size) < 0 || (!create && ftruncate(fd, (off_t)size) < 0))
        failed = STEP_WRITE;
    else if (sync && fdatasync(fd) < 0)
        failed = STEP_FSYNC;
    if (failed != STEP_OK) {
        *error = errno;
        close(fd);
        return failed;
    }
    if (close(fd) < 0 && errno != EINTR) {
        *error = errno;
        return STEP_WRITE;
    }
    return STEP_OK;
}

/* The whole write; runs without the interpreter lock. Sets *error on failure. */
static enum step
write_file_unlocked(const struct request *req, int *error)
{
    int dir_fd = req->dir->dir_fd;
    enum step failed = write_whole_unlocked(dir_fd, req->name, req->data, req->size,
                                            req->file_mode, req->create, 1, error);
    if (failed != STEP_OK)
        return failed;
    int moved = req->exchange ? exchange_names(dir_fd, req->name, req->target)
                              : renameat(dir_fd, req->name, dir_fd, req->target);
    if (moved < 0) {
        *error = errno;
        return STEP_RENAME;
    }
    if (req->sync_dir && (*error = shared_sync(req->dir)) != 0)
        return STEP_FSYNC_DIR;
    return STEP_OK;
}

/* The whole overwrite; runs without the interpreter lock. Sets *error on failure. */
static enum step
overwrite_unlocked(int dir_fd, const char *name, const char *data, size_t size, int *error)
{
    int fd = openat(dir_fd, name, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        *error = errno;
        return STEP_OPEN;
    }
    enum step failed = STEP_OK;
    if (write_all_at_start(fd, data, size) < 0)
        failed = STEP_WRITE;
    else if (fdatasync(fd) < 0)
        failed = STEP_FSYNC;
    if (failed != STEP_OK)
        *error = errno;
    close(fd);
    return failed;
}

struct batch_entry {
    PyObject *name;   /* bytes (file-system encoding), owned */
    PyObject *target; /* bytes, owned */
    Py_buffer data;
    int create;
    int has_data;     /* `data` holds a buffer to release */
    enum step failed;
    int error;
};

/* The whole batch; runs without the interpreter lock. */
static void
create_many_unlocked(int dir_fd, struct batch_entry *entries, Py_ssize_t count, int file_mode)
{
    int written = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        struct batch_entry *entry = &entries[i];
        entry->failed = write_whole_unlocked(dir_fd, PyBytes_AS_STRING(entry->name),
                                             entry->data.buf, (size_t)entry->data.len,
                                             file_mode, entry->create, 0, &entry->error);
        written += entries[i].failed == STEP_OK;
    }
    if (written == 0)
        return;
    if (syncfs(dir_fd) < 0) {
        int error = errno;
        for (Py_ssize_t i = 0; i < count; i++) {
            if (entries[i].failed == STEP_OK) {
                entries[i].failed = STEP_SYNCFS;
                entries[i].error = error;
            }
        }
        return;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (entries[i].failed != STEP_OK)
            continue;
        if (renameat(dir_fd, PyBytes_AS_STRING(entries[i].name), dir_fd,
                     PyBytes_AS_STRING(entries[i].target)) < 0) {
            entries[i].failed = STEP_RENAME;
            entries[i].error = errno;
        }
    }
}

static void
release_entries(struct batch_entry *entries, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_XDECREF(entries[i].name);
        Py_XDECREF(entries[i].target);
        if (entries[i].has_data)
            PyBuffer_Release(&entries[i].data);
    }
    PyMem_Free(entries);
}

static PyObject *
directory_create_many(Directory *self, PyObject *args)
{
    PyObject *list;
    int file_mode;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &list, &file_mode))
        return NULL;
    /* A snapshot: converting an entry may run Python code that changes the list. */
    PyObject *snapshot = PyList_AsTuple(list);
    if (snapshot == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(snapshot);
    struct batch_entry *entries = PyMem_Calloc(count ? (size_t)count : 1, sizeof *entries);
    if (entries == NULL) {
        Py_DECREF(snapshot);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name, *target, *item = PyTuple_GET_ITEM(snapshot, i);
        struct batch_entry *entry = &entries[i];
        if (!PyTuple_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "an entry must be a (name, target, data, create) tuple");
            release_entries(entries, i);
            Py_DECREF(snapshot);
            return NULL;
        }
        if (!PyArg_ParseTuple(item, "O&O&y*p", PyUnicode_FSConverter, &name,
                              PyUnicode_FSConverter, &target, &entry->data, &entry->create)) {
            /* The parser released what it had converted of this entry. */
            release_entries(entries, i);
            Py_DECREF(snapshot);
            return NULL;
        }
        entry->name = name;
        entry->target = target;
        entry->has_data = 1;
    }
    Py_DECREF(snapshot); /* each entry holds what it uses: its own bytes, a buffer view */
    Py_BEGIN_ALLOW_THREADS
    create_many_unlocked(self->dir_fd, entries, count, file_mode);
    Py_END_ALLOW_THREADS
    PyObject *result = PyList_New(count);
    for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
        PyObject *item;
        if (entries[i].failed == STEP_OK) {
            item = Py_NewRef(Py_None);
        } else {
            item = Py_BuildValue("(si)", step_names[entries[i].failed], entries[i].error);
            if (item == NULL)
                Py_CLEAR(result);
        }
        if (result != NULL)
            PyList_SET_ITEM(result, i, item);
    }
    release_entries(entries, count);
    return result;
}

static PyObject *
directory_overwrite(Directory *self, PyObject *args)
{
    const char *name;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "sy*", &name, &data))
        return NULL;
    int error = 0;
    enum step failed;
    Py_BEGIN_ALLOW_THREADS
    failed = overwrite_unlocked(self->dir_fd, name, data.buf, (size_t)data.len, &error);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (failed == STEP_OK)
        Py_RETURN_NONE;
    return Py_BuildValue("(si)", step_names[failed], error);
}

static PyObject *
directory_write_file(Directory *self, PyObject *args)
{
    struct request req;
    Py_buffer data;
    req.dir = self;
    if (!PyArg_ParseTuple(args, "ssy*ippp", &req.name, &req.target, &data, &req.file_mode,
                          &req.exchange, &req.create, &req.sync_dir))
        return NULL;
    req.data = data.buf;
    req.size = (size_t)data.len;
    int error = 0;
    enum step failed;
    Py_BEGIN_ALLOW_THREADS
    failed = write_file_unlocked(&req, &error);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (failed == STEP_OK)
        Py_RETURN_NONE;
    return Py_BuildValue("(si)", step_names[failed], error);
}

static PyObject *
directory_sync(Directory *self, PyObject *Py_UNUSED(ignored))
{
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = shared_sync(self);
    Py_END_ALLOW_THREADS
    if (error != 0) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static int
directory_init(Directory *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"dir_fd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i", keywords, &self->dir_fd))
        return -1;
    return 0;
}

static PyObject *
directory_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Directory *self = (Directory *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->dir_fd = -1;
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->done, NULL);
    return (PyObject *)self;
}

static void
directory_dealloc(Directory *self)
{
    pthread_cond_destroy(&self->done);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
directory_exchange(Directory *self, PyObject *args)
{
    int result;
    const char *name_a, *name_b;
    if (!PyArg_ParseTuple(args, "ss", &name_a, &name_b))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    result = exchange_names(self->dir_fd, name_a, name_b);
    Py_END_ALLOW_THREADS
    if (result < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef directory_methods[] = {
    {"write_file", (PyCFunction)directory_write_file, METH_VARARGS,
     "write_file(name, target, data, file_mode, exchange, create, sync_dir)\n--\n\n"
     "One durable write; None, or (failed step, errno)."},
    {"sync", (PyCFunction)directory_sync, METH_NOARGS,
     "sync()\n--\n\nWait for a directory fsync begun after this call (shared); OSError."},
    {"exchange", (PyCFunction)directory_exchange, METH_VARARGS,
     "exchange(name_a, name_b)\n--\n\nExchange two names atomically; OSError."},
    {"overwrite", (PyCFunction)directory_overwrite, METH_VARARGS,
     "overwrite(name, data)\n--\n\nWrite from offset 0 and fdatasync; None, or (failed step, errno)."},
    {"create_many", (PyCFunction)directory_create_many, METH_VARARGS,
     "create_many(entries, file_mode)\n--\n\n"
     "New files written unsynced, one syncfs, then renamed; per entry None or (step, errno)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DirectoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jobqueue.storage._fastwrite.Directory",
    .tp_doc = "Directory(dir_fd): durable writes into one directory, fsyncs shared.",
    .tp_basicsize = sizeof(Directory),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = directory_new,
    .tp_init = (initproc)directory_init,
    .tp_dealloc = (destructor)directory_dealloc,
    .tp_methods = directory_methods,
};

static PyMethodDef fastwrite_methods[] = {
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastwrite_module = {
    PyModuleDef_HEAD_INIT, "_fastwrite",
    "Durable file writes in one release of the interpreter lock.", -1, fastwrite_methods,
};

PyMODINIT_FUNC
PyInit__fastwrite(void)
{
    if (PyType_Ready(&DirectoryType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&fastwrite_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&DirectoryType);
    if (PyModule_AddObject(module, "Directory", (PyObject *)&DirectoryType) < 0) {
        Py_DECREF(&DirectoryType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
