UPDATE t SET v = 'x', n = NULL WHERE id = 2;
DELETE FROM t WHERE id = 2;
